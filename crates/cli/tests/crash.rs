//! Crash consistency and readiness, against the real `rnr serve`: the server is killed
//! (SIGKILL, armed with `RNR_FAULT`, see `rnr_driver::fault`) at each step of a machine's
//! creation, of its deletion, of a check run and of a webhook delivery; after the restart a
//! machine is either whole (adopted, answering) or gone, and on the native driver nothing
//! of a removed one is left on the host: no veth, runtime state, machine directory, btrfs
//! subvolume, cgroup, nor a second loop device. `/readyz` turns 503, naming the part, when
//! the database is locked, the data disk is full or the runtime hangs, within its timeout,
//! and 200 again once that is over.

mod common;

use common::{exercise_server, machines, native, webhook_sink, Server};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EXERCISE: &str = r#"
title = "Crash"
image = "tiny"
setup = "setup.sh"

[[check]]
name = "flag"
kind = "file"
path = "/tmp/flag"
message = "create /tmp/flag"
"#;

/// A server with an exercise (`crash`, with a setup script) and `env`.
fn server(env: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
    let files = [
        ("exercise.toml", EXERCISE),
        ("README.md", "# crash"),
        ("setup.sh", "echo set up > /root/setup\n"),
        ("solution.sh", "touch /tmp/flag\n"),
    ];
    exercise_server("crash", &files, env)
}

/// Every machine the platform has not deleted: id → (state, error).
fn platform_machines(s: &Server) -> Vec<(String, String, String)> {
    let (st, v) = s.call(Method::GET, "/api/v1/machines", None);
    assert_eq!(st, 200, "{v}");
    v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
                m["error"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn state_dir(s: &Server) -> PathBuf {
    s.data_dir.join("native")
}

fn env_of(s: &Server, key: &str) -> String {
    s.extra_env
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn ip_links() -> String {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The machine cgroups under this server's parent, per controller hierarchy.
fn cgroup_children(s: &Server) -> BTreeSet<String> {
    let parent = format!("rnr-{}", s.instance_owner());
    let mut out = BTreeSet::new();
    for ctrl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for e in std::fs::read_dir(ctrl.path().join(&parent))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().is_dir() {
                out.insert(format!(
                    "{}/{}",
                    ctrl.file_name().to_string_lossy(),
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    out
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Asserts nothing of machine `id` is left in the driver or, native, on the host.
fn assert_nothing_left(s: &Server, id: &str, when: &str) {
    assert!(
        !machines(s).contains(&id.to_string()),
        "{when}: the driver still has {id}"
    );
    if !native() {
        return;
    }
    let state = state_dir(s);
    for p in [
        state.join("run/machines").join(id),
        state.join("run/crun").join(id),
        state.join("disks").join(id),
    ] {
        assert!(!p.exists(), "{when}: {} is left", p.display());
    }
    let veth = rnr_driver_native::net::veth_name(&state.to_string_lossy(), id);
    assert!(
        !ip_links().contains(&veth),
        "{when}: veth {veth} of {id} is left"
    );
    let cgroups = cgroup_children(s);
    assert!(
        !cgroups.iter().any(|c| c.ends_with(&format!("/{id}"))),
        "{when}: cgroups of {id} are left: {cgroups:?}"
    );
}

/// Asserts the host holds exactly the parts of `running` machines: veths on this server's
/// bridges, runtime states, machine directories, disks, cgroups; and one loop device for
/// the disk pool at most.
fn assert_host_holds_only(s: &Server, running: &[String], when: &str) {
    let mut want: Vec<String> = running.to_vec();
    want.sort();
    let mut have = machines(s);
    have.sort();
    assert_eq!(have, want, "{when}: the driver's machines");
    if !native() {
        return;
    }
    let state = state_dir(s);
    let ids: BTreeSet<String> = want.iter().cloned().collect();
    for sub in ["run/machines", "run/crun", "disks"] {
        let names = names_in(&state.join(sub));
        assert_eq!(names, ids, "{when}: {sub}");
    }
    let bridge = env_of(s, "RNR_NATIVE__BRIDGE");
    let veths = ip_links()
        .lines()
        .filter(|l| {
            l.contains(&format!(" master {bridge} ")) || l.contains(&format!(" master {bridge}-"))
        })
        .count();
    assert_eq!(
        veths,
        want.len(),
        "{when}: veths on {bridge}:\n{}",
        ip_links()
    );
    let per_ctrl = cgroup_children(s)
        .into_iter()
        .filter(|c| c.starts_with("pids/"))
        .count();
    assert_eq!(per_ctrl, want.len(), "{when}: pids cgroups");
    let img = state.join("disk.img");
    if img.exists() {
        let out = Command::new("losetup")
            .arg("-j")
            .arg(&img)
            .output()
            .unwrap();
        let loops = String::from_utf8_lossy(&out.stdout).lines().count();
        assert_eq!(loops, 1, "{when}: loop devices backing {}", img.display());
    }
}

/// Sends a request the armed server dies in; the answer, if any, is not looked at.
fn request_and_crash(s: &mut Server, method: Method, path: &str, body: Value, point: &str) {
    let _ = s
        .req(method, path)
        .json(&body)
        .timeout(Duration::from_secs(60))
        .send();
    let logs = s.wait_crash(Duration::from_secs(60));
    assert!(
        logs.contains(&format!("fault injection: killed at {point}")),
        "the server died at {point}:\n{logs}"
    );
}

/// Kills `rnr serve` at each step of a creation and of a deletion: after each restart the
/// machine made before every crash is adopted and answers, the half-built one is failed
/// and has nothing left, the half-deleted one is deleted and has nothing left.
#[test]
fn killed_at_each_creation_and_deletion_step_nothing_half_built_is_adopted_nothing_leaks() {
    let (mut s, _root) = server(&[]);
    let whole = s.create(json!({}))["id"].as_str().unwrap().to_string();
    s.exec(&whole, "echo kept > /root/state");
    let mut known: BTreeSet<String> = [whole.clone()].into();
    // (fault point, request body, the step the store names)
    let mut creation: Vec<(&str, Value, &str)> = vec![
        ("create:reserved", json!({}), "reserved"),
        ("create:driver_creating", json!({}), "driver_creating"),
    ];
    if native() {
        for p in [
            // Nothing recorded in the driver: only its start-up sweep finds the directory.
            "native:create:dir",
            "native:create:recorded",
            "native:create:disk",
            "native:create:runtime_started",
            "native:create:network",
        ] {
            creation.push((p, json!({}), "driver_creating"));
        }
    }
    creation.push(("create:driver_created", json!({}), "driver_creating"));
    creation.push((
        "create:setup",
        json!({"exercise": "crash"}),
        "driver_created",
    ));

    let mut previous: Option<(&str, &str)> = None;
    for (point, body, step) in creation.iter().cloned() {
        s.set_env("RNR_FAULT", Some(point));
        if s.child.is_some() {
            s.restart_after_sigkill();
        } else {
            s.start_again();
        }
        check_half_built(&s, &whole, &mut known, previous);
        assert_host_holds_only(&s, std::slice::from_ref(&whole), point);
        request_and_crash(&mut s, Method::POST, "/api/v1/machines", body, point);
        previous = Some((point, step));
    }
    // Not armed: a restart carries out interrupted deletes, which would meet a deletion
    // fault.
    s.set_env("RNR_FAULT", None);
    s.start_again();
    check_half_built(&s, &whole, &mut known, previous);

    let mut deletion = vec!["delete:requested", "delete:driver_deleted"];
    if native() {
        deletion.insert(1, "native:delete:runtime");
    }
    for point in deletion {
        s.set_env("RNR_FAULT", Some(point));
        s.restart_after_sigkill();
        let id = s.create(json!({}))["id"].as_str().unwrap().to_string();
        request_and_crash(
            &mut s,
            Method::DELETE,
            &format!("/api/v1/machines/{id}"),
            Value::Null,
            point,
        );
        s.set_env("RNR_FAULT", None);
        s.start_again();
        let (st, m) = s.call(Method::GET, &format!("/api/v1/machines/{id}"), None);
        assert_eq!(
            (st, m["state"].as_str()),
            (200, Some("deleted")),
            "killed at {point}: {m}"
        );
        assert_nothing_left(&s, &id, point);
        assert_host_holds_only(&s, std::slice::from_ref(&whole), point);
    }
    assert_eq!(s.exec(&whole, "cat /root/state")["stdout"], "kept\n");
}

/// After a crash at `prev` (a point and the creation step it leaves recorded): the one new
/// machine is failed, saying at which step its creation was interrupted, nothing of it is
/// left, and `whole`, made before every crash, was adopted and is the same machine.
fn check_half_built(
    s: &Server,
    whole: &str,
    known: &mut BTreeSet<String>,
    prev: Option<(&str, &str)>,
) {
    let Some((point, step)) = prev else { return };
    let all = platform_machines(s);
    let new: Vec<_> = all.iter().filter(|m| !known.contains(&m.0)).collect();
    assert_eq!(
        new.len(),
        1,
        "after a crash at {point}, one new machine: {all:?}"
    );
    let (id, state, error) = new[0].clone();
    assert_eq!(
        state, "failed",
        "killed at {point}, {id} is not adopted: {error}"
    );
    assert!(
        error.contains("creation interrupted") && error.contains(&format!("at step {step}")),
        "killed at {point}: {error}"
    );
    assert_nothing_left(s, &id, point);
    known.insert(id);
    assert_eq!(
        s.exec(whole, "cat /root/state")["stdout"],
        "kept\n",
        "after {point}"
    );
}

/// Webhook deliveries as JSON, all answered 200.
fn deliveries() -> (String, impl Fn(Duration) -> Option<Value>) {
    let (url, rx) = webhook_sink(0);
    let next = move |limit| {
        rx.recv_timeout(limit)
            .ok()
            .map(|(_, body)| serde_json::from_slice(&body).unwrap_or(Value::Null))
    };
    (url, next)
}

fn wait_run(s: &Server, run: &str, what: &dyn Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = s.call(Method::GET, &format!("/api/v1/checks/{run}"), None);
        if what(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "run {run}: {v}\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A check run that kills the server each time it is taken up is tried `max_attempts`
/// times, then ends errored saying so (and its webhook says that), never queued again; a
/// webhook delivered just before a crash is delivered again after it, and recorded.
#[test]
fn check_runs_killed_each_attempt_are_capped_and_webhooks_survive_a_crash() {
    let (mut s, _root) = server(&[
        ("RNR_CHECKER__MAX_ATTEMPTS", "2"),
        ("RNR_CHECKER__WEBHOOK_SECRET", "s3cret"),
        // The receiver is on the loopback, which only webhook_allow opens to webhooks.
        ("RNR_CHECKER__WEBHOOK_ALLOW", r#"["127.0.0.1/32"]"#),
    ]);
    let id = s.create(json!({"exercise": "crash"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (url, next_delivery) = deliveries();
    s.set_env("RNR_FAULT", Some("check:claimed"));
    s.restart_after_sigkill();
    let (st, v) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{id}/checks"),
        Some(json!({"webhook_url": url})),
    );
    assert_eq!(st, 202, "{v}");
    let run = v["id"].as_str().unwrap().to_string();
    // Taken up and killed: attempt 1; queued again at the restart, taken, killed: 2.
    for attempt in 1..=2 {
        let logs = s.wait_crash(Duration::from_secs(60));
        assert!(
            logs.contains("killed at check:claimed"),
            "attempt {attempt}: {logs}"
        );
        if attempt == 1 {
            // The run is queued again and taken at once, perhaps before it listens.
            s.start_dying();
        }
    }
    s.set_env("RNR_FAULT", None);
    s.start_again();
    let r = wait_run(&s, &run, &|v| v["state"] == "errored");
    let why = r["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("2 attempts") && why.contains("max_attempts = 2"),
        "{r}"
    );
    let hook = next_delivery(Duration::from_secs(30)).expect("webhook");
    assert_eq!(
        (hook["id"].as_str(), hook["state"].as_str()),
        (Some(run.as_str()), Some("errored"))
    );
    std::thread::sleep(Duration::from_millis(1500));
    let r = wait_run(&s, &run, &|v| v["webhook"]["state"] == "delivered");
    assert_eq!(r["state"], "errored", "never queued again: {r}");

    // Delivered, then killed before the delivery was recorded: delivered again.
    s.set_env("RNR_FAULT", Some("webhook:delivered"));
    s.restart_after_sigkill();
    let (_, v) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{id}/checks"),
        Some(json!({"webhook_url": url})),
    );
    let run = v["id"].as_str().unwrap().to_string();
    let logs = s.wait_crash(Duration::from_secs(60));
    assert!(logs.contains("killed at webhook:delivered"), "{logs}");
    let first = next_delivery(Duration::from_secs(5)).expect("first delivery");
    s.set_env("RNR_FAULT", None);
    s.start_again();
    let again = next_delivery(Duration::from_secs(30)).expect("delivered again");
    assert_eq!(first, again, "the same body again");
    assert_eq!(again["id"], run.as_str());
    assert_eq!(again["state"], "done");
    let r = wait_run(&s, &run, &|v| v["webhook"]["state"] == "delivered");
    assert_eq!(r["webhook"]["attempts"], 1, "{r}");
}

/// GETs `/readyz`: (status, body, how long it took).
fn readyz(s: &Server) -> (u16, String, Duration) {
    let t = Instant::now();
    let resp = reqwest::blocking::Client::new()
        .get(format!("{}/readyz", s.url))
        .timeout(Duration::from_secs(30))
        .send()
        .expect("/readyz answers");
    let st = resp.status().as_u16();
    (st, resp.text().unwrap(), t.elapsed())
}

fn assert_ready(s: &Server, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, body, _) = readyz(s);
        if st == 200 {
            assert_eq!(body, "ready");
            return;
        }
        assert!(Instant::now() < deadline, "{when}: still {st} {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts `/readyz` is 503 `not_ready` naming `part` (and `also`), answered within
/// `limit`.
fn assert_not_ready(s: &Server, part: &str, also: &str, limit: Duration) {
    let (st, body, took) = readyz(s);
    assert_eq!(st, 503, "{body}");
    let v: Value = serde_json::from_str(&body).expect("a JSON error body");
    assert_eq!(v["error"]["code"], "not_ready", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("{part}: ")) && msg.contains(also),
        "{msg}"
    );
    assert!(took < limit, "/readyz took {took:?}");
}

/// A locked database and a full data disk flip `/readyz` within its timeout, naming
/// which; freed, it is ready again.
#[test]
fn readyz_names_a_locked_database_and_a_full_disk_within_its_timeout() {
    // The data dir on a filesystem of its own, small enough to fill.
    let tmp = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=192m", "tmpfs"])
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs (the tests run as root)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _unmount = Unmount(tmp.path().to_path_buf());
    let s = Server::start_in(
        tmp,
        &[
            ("RNR_READY_TIMEOUT_MS", "500"),
            ("RNR_MIN_FREE_DISK_MIB", "64"),
            ("RNR_NATIVE__DISK", "tmpfs"),
        ],
    );
    assert_ready(&s, "at start");

    // A second connection holds the write lock.
    let mut holder = Command::new("sqlite3")
        .arg(s.data_dir.join("rnr.db"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sqlite3");
    let mut stdin = holder.stdin.take().unwrap();
    writeln!(stdin, "BEGIN EXCLUSIVE;\nSELECT 'locked';").unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    assert_not_ready(&s, "store", "locked", Duration::from_secs(3));
    writeln!(stdin, "ROLLBACK;\n.quit").unwrap();
    drop(stdin);
    holder.wait().unwrap();
    assert_ready(&s, "the lock released");

    // The data disk filled to under 64 MiB free.
    let fill = s.data_dir.join("fill");
    let st = Command::new("fallocate")
        .args(["-l", "150M"])
        .arg(&fill)
        .status()
        .unwrap();
    assert!(st.success());
    assert_not_ready(&s, "disk", "min_free_disk_mib", Duration::from_secs(3));
    std::fs::remove_file(&fill).unwrap();
    assert_ready(&s, "the disk freed");
}

/// A runtime that hangs flips `/readyz` within its timeout, naming the driver, and a create
/// meanwhile fails within the runtime timeout instead of hanging; once the runtime answers
/// again the platform is ready, and what the failed create left is reaped.
#[test]
fn readyz_names_a_hanging_runtime_and_creates_do_not_hang() {
    if !native() {
        eprintln!("the native driver's runtime only: RNR_TEST_DRIVER=native");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hang = dir.path().join("hang");
    let runtime = dir.path().join("runtime");
    std::fs::write(
        &runtime,
        format!(
            "#!/bin/sh\n[ -e {} ] && exec sleep 600\nexec /usr/bin/crun \"$@\"\n",
            hang.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = Server::start(&[
        ("RNR_READY_TIMEOUT_MS", "500"),
        ("RNR_NATIVE__RUNTIME", runtime.to_str().unwrap()),
        ("RNR_NATIVE__RUNTIME_TIMEOUT_SECONDS", "2"),
        ("RNR_DELETE_TIMEOUT_SECONDS", "3"),
    ]);
    assert_ready(&s, "at start");
    let kept = s.create(json!({}))["id"].as_str().unwrap().to_string();
    let doomed = s.create(json!({}))["id"].as_str().unwrap().to_string();

    std::fs::write(&hang, "").unwrap();
    // A delete meanwhile fails within the runtime timeout, saying so; it is retried once
    // the runtime answers.
    let t = Instant::now();
    let (st, v) = s.call(Method::DELETE, &format!("/api/v1/machines/{doomed}"), None);
    assert!(st >= 500, "{st} {v}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_not_ready(&s, "driver", "", Duration::from_secs(3));
    let t = Instant::now();
    let (st, v) = s.call(
        Method::POST,
        "/api/v1/machines",
        Some(json!({"ttl_seconds": 3})),
    );
    assert!(st >= 500, "{st} {v}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "a create with a hanging runtime took {:?}",
        t.elapsed()
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("runtime_timeout_seconds"),
        "{v}"
    );
    // Machines already running go on: their execs do not go through the runtime.
    assert_eq!(s.exec(&kept, "echo up")["stdout"], "up\n");

    std::fs::remove_file(&hang).unwrap();
    assert_ready(&s, "the runtime answering again");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, m) = s.call(Method::GET, &format!("/api/v1/machines/{doomed}"), None);
        if m["state"] == "deleted" {
            break;
        }
        assert!(Instant::now() < deadline, "{doomed} not deleted: {m}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let logs = s.log_text();
    assert!(
        logs.lines()
            .any(|l| l.contains(&format!("machine={doomed}")) && l.contains("retries")),
        "the failed delete is logged with its machine:\n{logs}"
    );
    // The failed machine expires and is reaped; only the kept one is left.
    let deadline = Instant::now() + Duration::from_secs(30);
    while machines(&s).len() > 1 {
        assert!(
            Instant::now() < deadline,
            "left: {:?}\n{}",
            machines(&s),
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_host_holds_only(&s, &[kept], "after the hang");
}

/// A stand-in for the Docker Engine's socket that forwards to the real one until it is
/// "stopped": then every open connection is cut and new ones are closed at once, as with a
/// dockerd that went away, without stopping the engine other tests use.
struct EngineSocket {
    path: PathBuf,
    stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::os::unix::net::UnixStream>>>,
    _dir: tempfile::TempDir,
}

impl EngineSocket {
    fn new(engine: &'static str) -> Self {
        use std::os::unix::net::{UnixListener, UnixStream};
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (st, op) = (stopped.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                if st.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = UnixStream::connect(engine) else {
                    continue;
                };
                let mut held = op.lock().unwrap();
                for s in [&client, &server] {
                    held.push(s.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self {
            path,
            stopped,
            open,
            _dir: dir,
        }
    }

    fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn start(&self) {
        self.stopped
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A stopped Docker Engine flips `/readyz` within its timeout, naming the driver; back, the
/// platform is ready again.
#[test]
fn readyz_names_a_stopped_docker_engine() {
    if native() {
        eprintln!("a Docker test: it runs in the docker pass");
        return;
    }
    let engine = EngineSocket::new("/var/run/docker.sock");
    let s = Server::start(&[
        ("RNR_READY_TIMEOUT_MS", "500"),
        ("RNR_DOCKER__SOCKET", engine.path.to_str().unwrap()),
    ]);
    assert_ready(&s, "at start");
    engine.stop();
    assert_not_ready(&s, "driver", "docker engine", Duration::from_secs(3));
    engine.start();
    assert_ready(&s, "the engine back");
}

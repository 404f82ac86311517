//! The checker end to end, through the real `rnr serve` and real machines: every check
//! kind failing on a fresh machine with the author's message and passing once solved
//! (debian image); the persistent queue under a burst of 500 runs and across a SIGKILL;
//! signed, retried webhooks; live checking over SSE with sticky passes (tiny image); and
//! the authoring commands.

mod common;

use common::{ensure_debian, exercise_server, rnr, run_checks, webhook_sink, write, Server};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

fn by_name(run: &Value) -> HashMap<String, Value> {
    run["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {run}"))
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

const KINDS: &str = r#"
title = "Every kind of check"
image = "debian"
setup = "setup.sh"

[[check]]
name = "file-exists"
kind = "file"
path = "/tmp/k/f"
type = "file"
message = "M:file-exists"
hint = "H:file-exists"

[[check]]
name = "file-mode"
kind = "file"
path = "/tmp/k/f"
mode = "0640"
message = "M:file-mode"

[[check]]
name = "file-owner"
kind = "file"
path = "/tmp/k/f"
owner = "kuser"
group = "kgroup"
message = "M:file-owner"

[[check]]
name = "file-contains"
kind = "file"
path = "/tmp/k/f"
contains = "hello"
message = "M:file-contains"

[[check]]
name = "file-matches"
kind = "file"
path = "/tmp/k/f"
matches = '^id=\d+$'
message = "M:file-matches"

[[check]]
name = "file-link"
kind = "file"
path = "/tmp/k/link"
type = "symlink"
target = "/tmp/k/f"
message = "M:file-link"

[[check]]
name = "file-absent"
kind = "file"
path = "/tmp/k/gone"
exists = false
message = "M:file-absent"

[[check]]
name = "dir"
kind = "file"
path = "/tmp/k/d"
type = "directory"
message = "M:dir"

[[check]]
name = "user"
kind = "user"
user = "kuser"
uid = 1500
shell = "/bin/bash"
home = "/home/kuser"
member_of = ["kgroup"]
message = "M:user"

[[check]]
name = "user-absent"
kind = "user"
user = "kold"
exists = false
message = "M:user-absent"

[[check]]
name = "group"
kind = "group"
group = "kgroup"
gid = 1600
members = ["kuser"]
message = "M:group"

[[check]]
name = "package-removed"
kind = "package"
package = "tree"
installed = false
message = "M:package-removed"

[[check]]
name = "package-installed"
kind = "package"
package = "kinds-fake"
message = "M:package-installed"

[[check]]
name = "process-name"
kind = "process"
process = "svcd"
message = "M:process-name"

[[check]]
name = "process-cmdline"
kind = "process"
cmdline = 'sleep 777'
message = "M:process-cmdline"

[[check]]
name = "process-absent"
kind = "process"
process = "hogk"
running = false
message = "M:process-absent"

[[check]]
name = "port-tcp4"
kind = "port"
port = 7001
message = "M:port-tcp4"

[[check]]
name = "port-tcp6"
kind = "port"
port = 7002
message = "M:port-tcp6"

[[check]]
name = "port-udp"
kind = "port"
port = 7003
protocol = "udp"
message = "M:port-udp"

[[check]]
name = "port-closed"
kind = "port"
port = 7004
listening = false
message = "M:port-closed"

[[check]]
name = "command-exit"
kind = "command"
command = "test -f /tmp/k/f"
message = "M:command-exit"

[[check]]
name = "command-stdout"
kind = "command"
command = "cat /tmp/k/f"
stdout = "hello"
message = "M:command-stdout"

[[check]]
name = "command-stderr"
kind = "command"
command = "cat /tmp/k/err >&2; exit 3"
exit_code = 3
stderr = '^oops$'
message = "M:command-stderr"

[[check]]
name = "command-user"
kind = "command"
command = "id -un"
user = "kuser"
stdout = '^kuser$'
needs = ["user"]
message = "M:command-user"

[[check]]
name = "retry"
kind = "command"
command = "test -f /tmp/k/late"
retry_seconds = 4
message = "M:retry"

[[check]]
name = "service"
kind = "service"
service = "kinds"
message = "M:service"

[[check]]
name = "script"
kind = "script"
script = "checks/script.sh"
message = "M:script"

[[check]]
name = "chain"
kind = "file"
path = "/tmp/k/f"
needs = ["file-exists"]
message = "M:chain"

[[check]]
name = "http"
kind = "http"
port = 7001
path = "/"
status = 200
body = "kinds-ok"
header = "Content-Type: text/html"
message = "M:http"

[[check]]
name = "http-404"
kind = "http"
port = 7001
path = "/missing"
status = 404
message = "M:http-404"

[[check]]
name = "slow"
kind = "command"
command = "sleep 5"
timeout_seconds = 0.5
message = "M:slow"

[[check]]
name = "py"
kind = "pytest"
file = "checks/test_kinds.py"
"#;

const KINDS_SETUP: &str = r#"#!/bin/sh
set -e
mkdir -p /tmp/k
touch /tmp/k/gone
useradd kold
cat > /etc/init.d/kinds <<'EOF'
#!/bin/sh
case "$1" in
  start) start-stop-daemon --start --background --make-pidfile --pidfile /run/kinds.pid --exec /usr/local/bin/svcd ;;
  status) start-stop-daemon --status --pidfile /run/kinds.pid ;;
esac
EOF
chmod 755 /etc/init.d/kinds
printf '#!/bin/sh\nwhile :; do sleep 1; done\n' > /usr/local/bin/svcd
cp /usr/local/bin/svcd /usr/local/bin/hogk
chmod 755 /usr/local/bin/svcd /usr/local/bin/hogk
nohup /usr/local/bin/hogk >/dev/null 2>&1 &
nohup python3 -c 'import socket,time; s=socket.socket(); s.bind(("0.0.0.0",7004)); s.listen(); time.sleep(100000)' >/dev/null 2>&1 &
echo $! > /tmp/k/7004.pid
for i in $(seq 50); do grep -q ':1B5C 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.1; done
exit 1
"#;

const KINDS_SOLUTION: &str = r#"
set -e
groupadd -g 1600 kgroup
useradd -m -u 1500 -s /bin/bash -G kgroup kuser
printf 'hello\nid=42\n' > /tmp/k/f
chown kuser:kgroup /tmp/k/f
chmod 640 /tmp/k/f
ln -s /tmp/k/f /tmp/k/link
rm /tmp/k/gone
mkdir /tmp/k/d
userdel kold
dpkg -r tree >/dev/null 2>&1
printf '\nPackage: kinds-fake\nStatus: install ok installed\nVersion: 1\n' >> /var/lib/dpkg/status
/etc/init.d/kinds start
pkill hogk
kill $(cat /tmp/k/7004.pid)
nohup sleep 777 >/dev/null 2>&1 &
mkdir -p /srv/k && echo '<p>kinds-ok</p>' > /srv/k/index.html
cd /srv/k && nohup python3 -m http.server 7001 >/dev/null 2>&1 &
nohup python3 -c 'import socket,time; s=socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); s.bind(("::",7002)); s.listen(); time.sleep(100000)' >/dev/null 2>&1 &
nohup python3 -c 'import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0",7003)); time.sleep(100000)' >/dev/null 2>&1 &
echo oops > /tmp/k/err
(sleep 1; touch /tmp/k/late) >/dev/null 2>&1 &
for i in $(seq 50); do grep -q ':1B59 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.1; done
exit 1
"#;

const KINDS_SCRIPT: &str =
    "#!/bin/sh\n[ -f /tmp/k/f ] || { echo 'FAIL: the script says f is missing'; exit 1; }\n";

const KINDS_PYTEST: &str = r#"
import requests

def test_file(s):
    assert s.run('test -f /tmp/k/f').succeeded, "py: f is missing"

def test_output(s):
    r = s.run('cat /tmp/k/f')
    assert r.return_code == 0 and "hello" in r.stdout, "py: f does not say hello"

def test_web(s):
    try:
        r = requests.get("http://%s:7001/" % s.ip, timeout=2)
    except Exception:
        assert False, "py: nothing answers on 7001"
    assert "kinds-ok" in r.text, "py: wrong page"
"#;

#[test]
fn every_check_kind_fails_with_its_message_then_passes() {
    ensure_debian();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("kinds");
    write(&dir, "exercise.toml", KINDS);
    write(&dir, "README.md", "# kinds");
    write(&dir, "setup.sh", KINDS_SETUP);
    write(&dir, "solution.sh", KINDS_SOLUTION);
    write(&dir, "checks/script.sh", KINDS_SCRIPT);
    write(&dir, "checks/test_kinds.py", KINDS_PYTEST);
    let exercises = root.path().to_str().unwrap();
    let s = Server::start(&[("RNR_CHECKER__EXERCISES_DIR", exercises)]);
    let m = s.create(json!({"exercise": "kinds", "ttl_seconds": 600}));
    assert_eq!(m["image"], "debian", "{m}");
    let id = m["id"].as_str().unwrap();

    let fresh = run_checks(&s, id);
    assert_eq!(fresh["state"], "done", "{fresh}");
    let r = by_name(&fresh);
    let skipped = ["command-user", "chain"];
    let errored = ["slow"];
    for (name, res) in &r {
        let want = if skipped.contains(&name.as_str()) {
            "skipped"
        } else if errored.contains(&name.as_str()) {
            "errored"
        } else {
            "failed"
        };
        assert_eq!(res["status"], want, "fresh {name}: {res}");
        if want == "failed" && !name.starts_with("py/") && name != "script" {
            assert_eq!(res["message"], format!("M:{name}"), "{res}");
        }
    }
    assert_eq!(r["file-exists"]["hint"], "H:file-exists");
    assert_eq!(r["script"]["message"], "the script says f is missing");
    assert_eq!(r["py/test_file"]["message"], "py: f is missing");
    assert_eq!(r["py/test_output"]["message"], "py: f does not say hello");
    assert_eq!(r["py/test_web"]["message"], "py: nothing answers on 7001");
    assert!(
        r["slow"]["detail"].as_str().unwrap().contains("timed out"),
        "{}",
        r["slow"]
    );
    assert!(
        r["retry"]["duration_ms"].as_u64().unwrap() >= 3500,
        "the retry window was used: {}",
        r["retry"]
    );
    assert_eq!(fresh["score"], 0.0);
    assert_eq!(fresh["errored"], 1);

    let out = s.exec(id, KINDS_SOLUTION);
    assert_eq!(out["exit_code"], 0, "solution: {out}");
    let solved = run_checks(&s, id);
    for (name, res) in by_name(&solved) {
        let want = if name == "slow" { "errored" } else { "passed" };
        assert_eq!(res["status"], want, "solved {name}: {res}");
    }
    assert_eq!(solved["passed"], r.len() - 1);
}

const QUICK: &str = r#"
title = "Quick"
image = "tiny"
sticky = true

[[check]]
name = "passwd"
kind = "file"
path = "/etc/passwd"
contains = "root"
message = "no root in /etc/passwd"

[[check]]
name = "flag"
kind = "file"
path = "/tmp/flag"
message = "create /tmp/flag"
"#;

fn quick_server(extra: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
    let files = [
        ("exercise.toml", QUICK),
        ("README.md", "# quick"),
        ("solution.sh", "touch /tmp/flag\n"),
    ];
    exercise_server("quick", &files, extra)
}

fn count(s: &Server, state: &str) -> i64 {
    let out = std::process::Command::new("sqlite3")
        .arg(s.data_dir.join("rnr.db"))
        .arg(format!(
            "SELECT COUNT(*) FROM check_runs WHERE state = '{state}'"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_burst_of_500_runs_is_queued_none_lost_none_twice_and_survives_a_restart() {
    let (mut s, _root) = quick_server(&[("RNR_CHECKER__WORKERS", "4")]);
    let m = s.create(json!({"exercise": "quick"}));
    let id = m["id"].as_str().unwrap().to_string();
    let (url, key) = (s.url.clone(), s.key.clone());
    let runs: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..10)
            .map(|_| {
                let (url, key, id) = (&url, &key, &id);
                scope.spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    (0..50)
                        .map(|_| {
                            let resp = client
                                .post(format!("{url}/api/v1/machines/{id}/checks"))
                                .bearer_auth(key)
                                .send()
                                .unwrap();
                            assert_eq!(resp.status(), 202);
                            let v: Value = resp.json().unwrap();
                            v["id"].as_str().unwrap().to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(runs.len(), 500);
    // Killed mid-burst: queued and running runs must all be carried out after the restart.
    std::thread::sleep(Duration::from_millis(500));
    s.restart_after_sigkill();
    let deadline = Instant::now() + Duration::from_secs(300);
    while count(&s, "done") < 500 {
        assert!(
            Instant::now() < deadline,
            "only {} of 500 done",
            count(&s, "done")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for run in &runs {
        let (_, v) = s.call(Method::GET, &format!("/api/v1/checks/{run}"), None);
        assert_eq!(v["state"], "done", "{v}");
        assert_eq!(v["results"][0]["status"], "passed", "{v}");
        assert_eq!(v["results"][1]["message"], "create /tmp/flag", "{v}");
    }
    // Each run was recorded once: a run claimed twice would have attempts 2 only if the
    // crash interrupted it, and never more.
    let out = std::process::Command::new("sqlite3")
        .arg(s.data_dir.join("rnr.db"))
        .arg("SELECT COUNT(*), SUM(attempts > 2), COUNT(DISTINCT id) FROM check_runs")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "500|0|500");
    assert_eq!(count(&s, "queued") + count(&s, "running"), 0);
}

#[test]
fn webhooks_are_signed_and_retried() {
    // The receiver is on the loopback, which only webhook_allow opens to webhooks.
    let (s, _root) = quick_server(&[
        ("RNR_CHECKER__WEBHOOK_SECRET", "s3cret"),
        ("RNR_CHECKER__WEBHOOK_ALLOW", r#"["127.0.0.1/32"]"#),
    ]);
    let m = s.create(json!({"exercise": "quick"}));
    let id = m["id"].as_str().unwrap();
    let metadata = "http://169.254.169.254/latest/meta-data";
    let (status, v) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{id}/checks"),
        Some(json!({"webhook_url": metadata})),
    );
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("invalid_request")),
        "{v}"
    );
    assert!(
        message.contains(metadata) && message.contains("link-local"),
        "{v}"
    );
    let (url, rx) = webhook_sink(1);
    let (status, v) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{id}/checks"),
        Some(json!({"webhook_url": url})),
    );
    assert_eq!(status, 202, "{v}");
    let run = v["id"].as_str().unwrap().to_string();
    let (_, first) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("first delivery");
    let (head, body) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("retried delivery");
    assert_eq!(first, body, "the retry sends the same body");
    let sig = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-rnr-signature: ")
                .map(str::to_string)
        })
        .expect("signature header");
    assert_eq!(sig.trim(), rnr_checker::webhook::signature("s3cret", &body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["id"], run);
    assert_eq!(v["report"]["results"][1]["message"], "create /tmp/flag");
    // The run records the delivery.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, r) = s.call(Method::GET, &format!("/api/v1/checks/{run}"), None);
        if r["webhook"]["state"] == "delivered" {
            assert_eq!(r["webhook"]["attempts"], 2);
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Without a secret, no webhooks: refused up front.
    let (status, v) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{id}/checks"),
        Some(json!({"webhook_url": "ftp://x"})),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("invalid_request")),
        "{v}"
    );
}

/// Reads SSE `results` events from the machine's stream on a thread.
fn subscribe(s: &Server, machine: &str) -> std::sync::mpsc::Receiver<Value> {
    let resp = s
        .client()
        .get(format!("{}/api/v1/machines/{machine}/checks/stream", s.url))
        .bearer_auth(&s.key)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(resp).lines().map_while(Result::ok) {
            if let Some(data) = line.strip_prefix("data: ") {
                if tx.send(serde_json::from_str(data).unwrap()).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[test]
fn live_checks_follow_activity_push_changes_and_passes_stick() {
    let (s, _root) = quick_server(&[("RNR_CHECKER__DEBOUNCE_MS", "300")]);
    let m = s.create(json!({"exercise": "quick"}));
    let id = m["id"].as_str().unwrap();
    let events = subscribe(&s, id);
    let activity = |s: &Server| {
        let (status, _) = s.call(
            Method::POST,
            &format!("/api/v1/machines/{id}/activity"),
            None,
        );
        assert_eq!(status, 204);
    };
    activity(&s);
    let e = events
        .recv_timeout(Duration::from_secs(20))
        .expect("first live run");
    assert_eq!(e["trigger"], "live");
    assert_eq!(by_name(&e)["flag"]["status"], "failed");
    // The learner solves it: activity, a pause, and the change is pushed.
    s.exec(id, "touch /tmp/flag");
    activity(&s);
    let e = events
        .recv_timeout(Duration::from_secs(20))
        .expect("change pushed");
    assert_eq!(by_name(&e)["flag"]["status"], "passed", "{e}");
    // Undone: the exercise is sticky, so it stays passed, and nothing changed to push.
    s.exec(id, "rm /tmp/flag");
    let run = run_checks(&s, id);
    let flag = &by_name(&run)["flag"];
    assert_eq!(flag["status"], "passed", "{run}");
    assert!(flag["detail"].as_str().unwrap().contains("passed earlier"));
    assert!(events.recv_timeout(Duration::from_secs(2)).is_err());
    // Bursts of activity are debounced into one run.
    let before = count(&s, "done");
    for _ in 0..20 {
        activity(&s);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count(&s, "done") - before, 1);
}

#[test]
fn api_errors_name_what_is_wrong() {
    let (s, _root) = quick_server(&[]);
    let (status, v) = s.call(
        Method::POST,
        "/api/v1/machines",
        Some(json!({"exercise": "nope"})),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("exercise_not_found")),
        "{v}"
    );
    let plain = s.create(json!({}));
    let pid = plain["id"].as_str().unwrap();
    let (status, v) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{pid}/checks"),
        None,
    );
    assert_eq!(status, 422, "a machine without an exercise: {v}");
    let (status, v) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{pid}/checks"),
        Some(json!({"exercise": "quick"})),
    );
    assert_eq!(status, 202, "{v}");
    let (status, v) = s.call(Method::GET, "/api/v1/checks/c-nope", None);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("check_run_not_found"))
    );
    let (status, v) = s.call(Method::POST, "/api/v1/machines/m-nope/checks", None);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("machine_not_found")),
        "{v}"
    );
}

#[test]
fn validate_reports_errors_at_file_line_col() {
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        "bad/exercise.toml",
        "title = \"bad\"\n\n[[check]]\nname = \"x\"\nkind = \"port\"\nport = 80\nprotocol = \"sctp\"\nmessage = \"m\"\n",
    );
    let out = rnr()
        .args(["exercise", "validate"])
        .arg(root.path().join("bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let file = root.path().join("bad/exercise.toml");
    assert!(
        text.contains(&format!(
            "{}:7:12: check \"x\": field \"protocol\" of kind \"port\": unknown value `sctp`, \
             expected `tcp` or `udp`",
            file.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("README.md"),
        "missing instructions reported: {text}"
    );
    let ok = rnr()
        .args(["exercise", "validate"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../exercises"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
}

/// The starter library: every exercise fails fresh and passes with its solution.
#[test]
fn starter_exercises_pass_rnr_exercise_test() {
    ensure_debian();
    let data = tempfile::tempdir().unwrap();
    let out = rnr()
        .args(["exercise", "test"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../exercises"))
        .arg("--data-dir")
        .arg(data.path())
        .env("RNR_DRIVER", "docker")
        .env("RNR_DOCKER__NETWORK", common::NETWORK)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.matches("PASS in").count() >= 10, "{text}");
}

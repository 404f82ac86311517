//! Pytest checks cannot be turned against the host: through a real `rnr serve` (the native
//! driver with `RNR_TEST_DRIVER=native`, else Docker) and real machines of the tiny image,
//! a check file tries what a hostile machine could steer a check into — reading and
//! writing the host's files and rnr's data dir, rnr's environment and secret, the host's
//! loopback and addresses, another machine, a cloud's metadata service, root, a fork bomb,
//! a memory hog, a process left behind — and asserts each is denied, while ordinary
//! checks against the machine (exec, HTTP, the `http` helper's redirects on the machine)
//! pass. Each denial is a test of the file; the Rust test wants every one passed.

mod common;

use common::{run_checks, write, Server};
use serde_json::json;
use std::time::Instant;

const SECRET: &str = "sekrit-webhook-key-4711";

const MANIFEST: &str = r#"
title = "A check that tries to escape"
image = "tiny"
setup = "setup.sh"

[[check]]
name = "py"
kind = "pytest"
file = "checks/test_escape.py"
timeout_seconds = 60

[[check]]
name = "hang"
kind = "pytest"
file = "checks/test_hang.py"
timeout_seconds = 3
"#;

/// A check that outlives its time, with a process of its own in the background.
const HANG: &str = r#"
import subprocess, time

def test_hang():
    subprocess.Popen(["sleep", "314"], start_new_session=True)
    time.sleep(60)
"#;

/// A web server in the machine: a page, a redirect on the machine, one off it (to the
/// host's loopback), a body too large, an answer that never comes.
fn setup(host_port: u16) -> String {
    format!(
        r#"#!/bin/sh
set -e
mkdir -p /www/cgi-bin
echo sandbox-ok > /www/index.html
cat > /www/cgi-bin/home <<'EOF'
#!/bin/sh
printf 'HTTP/1.1 302 Found\r\nLocation: /index.html\r\nContent-Length: 0\r\n\r\n'
EOF
cat > /www/cgi-bin/away <<'EOF'
#!/bin/sh
printf 'HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{host_port}/\r\nContent-Length: 0\r\n\r\n'
EOF
cat > /www/cgi-bin/big <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
head -c 6000000 /dev/zero
EOF
cat > /www/cgi-bin/slow <<'EOF'
#!/bin/sh
sleep 30
EOF
chmod +x /www/cgi-bin/*
httpd -p 8080 -h /www
"#
    )
}

fn checks(data_dir: &str, host_port: u16) -> String {
    format!(
        r#"
import os, socket, subprocess, sys, time

import pytest
import requests

from rnr_pytest import TooLarge

DATA_DIR = {data_dir:?}
HOST_PORT = {host_port}
SECRET = {SECRET:?}
HERE = os.path.dirname(os.path.abspath(__file__))
OTHER_IP = open(os.path.join(HERE, "other_ip")).read().strip()


def reaches(host, port):
    c = socket.socket()
    c.settimeout(2)
    try:
        c.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        c.close()


def test_the_machine_is_reachable(s, http):
    r = s.run("cat /www/index.html")
    assert r.succeeded and r.stdout == "sandbox-ok", "exec: %r" % r
    assert "sandbox-ok" in requests.get("http://%s:8080/" % s.ip).text, "http"
    assert "sandbox-ok" in http.get("/", port=8080).text, "helper"


def test_redirects_are_followed_on_the_machine_only(http):
    r = http.get("/cgi-bin/home", port=8080)
    assert (r.status_code, r.text.strip()) == (200, "sandbox-ok"), r.status_code
    r = http.get("/cgi-bin/away", port=8080)
    assert r.status_code == 302, "a redirect off the machine is not followed"
    with pytest.raises(ValueError):
        http.get("http://127.0.0.1:%d/" % HOST_PORT)


def test_bodies_are_capped_and_reads_time_out(http):
    with pytest.raises(TooLarge):
        http.get("/cgi-bin/big", port=8080)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        http.get("/cgi-bin/slow", port=8080, timeout=(2, 1))
    assert time.monotonic() - started < 10


def test_not_root():
    assert os.getuid() >= 900000000 and os.getgid() == os.getuid(), os.getuid()
    assert os.getgroups() == [], os.getgroups()


def test_clean_environment():
    leaked = sorted(k for k in os.environ if k.startswith("RNR_"))
    assert not leaked, leaked
    assert not any(SECRET in v for v in os.environ.values()), "the webhook secret leaked"
    assert os.environ["HOME"] == "/tmp"


def test_host_files_are_out_of_sight():
    for path in [DATA_DIR + "/rnr.db", "/root/.bashrc", "/var/lib", "/home"]:
        with pytest.raises(OSError):
            open(path, "rb").read(1)
    with pytest.raises(OSError):
        os.listdir(DATA_DIR)
    # rnr itself, its environment: not even visible.
    assert not os.path.exists("/proc/%d/environ" % os.getppid()), "rnr's /proc"
    assert not os.path.exists("/proc/1"), "pid 1"
    # No descriptor of rnr's came along (its listeners, its database).
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink("/proc/self/fd/" + fd))
        except OSError:
            pass  # the listing's own descriptor, closed by now
    assert not [l for l in links if l.startswith("socket:") or DATA_DIR in l], links


def test_host_paths_are_read_only():
    for path in [HERE + "/pwned", "/pwned", "/usr/pwned", "/etc/pwned", "/rnr/pwned"]:
        with pytest.raises(OSError):
            open(path, "w").write("x")
    # The private /tmp is writable, and not the host's.
    open("/tmp/rnr-sandbox-probe", "w").write("x")


def test_host_and_other_machines_are_unreachable(s):
    gateway = s.ip.rsplit(".", 1)[0] + ".1"
    for host, port in [
        ("127.0.0.1", HOST_PORT),
        (gateway, HOST_PORT),
        (OTHER_IP, 8080),
        ("169.254.169.254", 80),
    ]:
        assert not reaches(host, port), "%s:%d is reachable" % (host, port)


def test_no_namespaces_of_its_own():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for flag in [0x10000000, 0x40000000, 0x20000]:  # user, net, mount
        assert libc.unshare(flag) == -1 and ctypes.get_errno() == 1, "unshare(%#x)" % flag


def test_fork_bomb_is_capped():
    pids = []
    try:
        for _ in range(400):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            pids.append(pid)
    except OSError:
        pass
    finally:
        for pid in pids:
            os.kill(pid, 9)
        for pid in pids:
            os.waitpid(pid, 0)
    assert len(pids) < 200, "%d processes" % len(pids)


def test_memory_is_capped():
    r = subprocess.run([sys.executable, "-c", "b = b'x' * (1 << 30)"])
    assert r.returncode == -9, "a 1 GiB hog ended with %d" % r.returncode


def test_left_behind():
    subprocess.Popen(["sleep", "313"], start_new_session=True)
"#
    )
}

/// Processes on the host whose command line is `sleep <n>`.
fn sleepers(n: u32) -> usize {
    let cmdline = format!("sleep\0{n}\0").into_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| *c == cmdline)
        .count()
}

/// A rule as an rnr killed mid-check leaves it, for a veth long gone; deleted when
/// dropped if the server did not sweep it.
struct StaleRule(&'static str);

impl StaleRule {
    fn add(rule: &'static str) -> Self {
        let args: Vec<&str> = rule.split(' ').collect();
        let ok = std::process::Command::new("iptables")
            .args(["-w", "-I"])
            .args(&args)
            .status()
            .unwrap();
        assert!(ok.success());
        Self(rule)
    }

    fn present(&self) -> bool {
        let args: Vec<&str> = self.0.split(' ').collect();
        std::process::Command::new("iptables")
            .args(["-w", "-C"])
            .args(&args)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for StaleRule {
    fn drop(&mut self) {
        if self.present() {
            let args: Vec<&str> = self.0.split(' ').collect();
            let _ = std::process::Command::new("iptables")
                .args(["-w", "-D"])
                .args(&args)
                .status();
        }
    }
}

#[test]
fn a_pytest_check_reaches_only_its_machine() {
    let stale = StaleRule::add("INPUT -i rnrcfffffff -j DROP");
    // A host service on every address: the loopback, the machines' gateway.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in listener.incoming() {});
    let _ = std::fs::remove_file("/tmp/rnr-sandbox-probe");

    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("escape");
    write(&dir, "exercise.toml", MANIFEST);
    write(&dir, "README.md", "# escape");
    write(&dir, "solution.sh", "true\n");
    write(&dir, "setup.sh", &setup(host_port));
    let s = Server::start(&[
        ("RNR_CHECKER__EXERCISES_DIR", root.path().to_str().unwrap()),
        ("RNR_CHECKER__WEBHOOK_SECRET", SECRET),
    ]);
    assert!(
        !stale.present(),
        "the server did not sweep a gone sandbox's rule"
    );
    let data_dir = s.data_dir.to_str().unwrap().to_string();
    write(&dir, "checks/test_escape.py", &checks(&data_dir, host_port));
    write(&dir, "checks/test_hang.py", HANG);
    let other = s.create(json!({"exercise": "escape", "ttl_seconds": 600}));
    write(&dir, "checks/other_ip", other["address"].as_str().unwrap());
    let m = s.create(json!({"exercise": "escape", "ttl_seconds": 600}));
    let id = m["id"].as_str().unwrap();

    let started = Instant::now();
    let run = run_checks(&s, id);
    eprintln!("the check ran in {:?}", started.elapsed());
    assert_eq!(run["state"], "done", "{run}");
    let results = run["results"].as_array().expect("results");
    assert_eq!(results.len(), 13, "{run}");
    for r in results {
        if r["name"] == "hang" {
            // Cut off at its timeout, the whole cgroup with it.
            assert_eq!(r["status"], "errored", "{r}");
            assert!(
                r["detail"]
                    .as_str()
                    .unwrap()
                    .contains("did not finish within 3s"),
                "{r}"
            );
        } else {
            assert_eq!(r["status"], "passed", "{}: {r}", r["name"]);
        }
    }
    // Nothing of the run is left on the host.
    assert!(
        !std::path::Path::new("/tmp/rnr-sandbox-probe").exists(),
        "the check wrote to the host's /tmp"
    );
    assert_eq!(sleepers(313), 0, "a process of the check outlived it");
    assert_eq!(
        sleepers(314),
        0,
        "a process of the timed-out check outlived it"
    );
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains(": rnrc"),
        "a sandbox's veth is left: {links}"
    );
    let rules = std::process::Command::new("iptables-save")
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        !rules.contains("-i rnrc") && !rules.contains("-o rnrc"),
        "a sandbox's rules are left: {rules}"
    );
    for controller in ["pids", "memory"] {
        let parent = std::path::Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("rnr-checks");
        let left: Vec<_> = std::fs::read_dir(&parent)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "cgroups left in {}: {left:?}",
            parent.display()
        );
    }
}

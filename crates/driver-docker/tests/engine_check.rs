//! The driver's look at the engine it is given: one without user-namespace remapping (a
//! second, plain dockerd this test starts on a socket of its own, with no iptables or
//! bridge of its own) is refused under `require_userns_remap`, saying why and how to fix it.
//! The remapped engine's acceptance is every other suite here (they all require it).

use rnr_driver_docker::{DockerConfig, DockerDriver};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A dockerd of the test's own; stopped (SIGTERM, its containerd with it) and its
/// directories removed when dropped.
struct PlainEngine {
    child: Child,
    dir: tempfile::TempDir,
}

impl PlainEngine {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rnr-plain-dockerd-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(p("root"))
            .arg("--exec-root")
            .arg(p("exec"))
            .arg("--pidfile")
            .arg(p("pid"))
            .arg("-H")
            .arg(format!("unix://{}", p("sock").display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(["--storage-driver", "vfs"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dockerd (docker.io) on PATH");
        let engine = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !engine.socket().exists() {
            assert!(Instant::now() < deadline, "the plain dockerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        engine
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }
}

impl Drop for PlainEngine {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this process spawned and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_without_remapping_is_refused_when_required() {
    let engine = PlainEngine::start();
    let socket = engine.socket();
    let connect = || {
        DockerDriver::connect(DockerConfig {
            socket: socket.clone(),
            owner: format!("enginecheck-{}", std::process::id()),
            network: "rnr-test-plain".into(),
            proc_root: "/proc".into(),
            agent: None,
            agent_stage: Path::new(env!("CARGO_TARGET_TMPDIR")).join("docker-agent"),
            disk_mib: None,
            require_userns_remap: true,
            max_ptys: 0,
        })
    };
    // The socket appears before the engine answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        match connect().await {
            Ok(_) => panic!("an engine without remapping was accepted"),
            Err(e) if e.to_string().contains("remapping") => break e.to_string(),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the plain engine never answered: {e}"),
        }
    };
    assert!(
        err.contains("WITHOUT user-namespace remapping")
            && err.contains(&socket.display().to_string())
            && err.contains("require_userns_remap")
            && err.contains("--userns-remap"),
        "the refusal says what, where and how to fix it: {err}"
    );
}

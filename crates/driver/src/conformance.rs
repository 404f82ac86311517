//! The conformance suite every driver must pass, shared so that all backends are held to
//! exactly the same behaviour. A driver crate instantiates it with
//! `rnr_driver::conformance_tests!(setup);` where `setup` is an
//! `async fn() -> Harness` building a fresh driver for that backend.

use crate::{
    collect, AgentChannel, Driver, DriverError, ExecHandle, ExecRequest, ExecSpec, Limits,
    MachineInfo, MachineSpec, MachineStats, MachineStatus, NetworkSpec, OutputChunk, Result,
    TtySize,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use rnr_agent_proto::check::{Check, CheckKind, FileCheck, ScriptCheck, Status, Suite};
use rnr_agent_proto::frame;
use rnr_agent_proto::session::{FromDaemon, Hello, ToDaemon};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A driver under test and the image it can start.
pub struct Harness {
    pub driver: Arc<dyn Driver>,
    pub image: String,
    /// A root filesystem tarball the driver can import (the one `image` came from), for
    /// the tests of its image store.
    pub rootfs_tar: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique machine id for this process and test.
pub fn unique_id(tag: &str) -> String {
    format!(
        "t{}{}-{tag}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn spec(h: &Harness, tag: &str) -> MachineSpec {
    MachineSpec {
        kind: Default::default(),
        id: unique_id(tag),
        image: h.image.clone(),
        hostname: format!("host-{tag}"),
        limits: Limits {
            memory_mib: 64,
            cpu_millis: 500,
            pids: 64,
        },
        network: NetworkSpec::default(),
        labels: BTreeMap::from([("io.rootnroll.test".to_string(), tag.to_string())]),
    }
}

/// Deletes the machine when dropped, so a failing assertion leaves nothing behind.
pub struct Cleanup {
    driver: Arc<dyn Driver>,
    id: String,
}

impl Cleanup {
    pub fn new(h: &Harness, id: &str) -> Self {
        Self {
            driver: h.driver.clone(),
            id: id.to_string(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let driver = self.driver.clone();
        let id = self.id.clone();
        // Drop cannot be async; a scoped runtime on a fresh thread finishes the delete.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(driver.delete(&id));
            }
        })
        .join();
    }
}

pub async fn sh(h: &Harness, id: &str, script: &str) -> crate::ExecOutcome {
    collect(
        h.driver.as_ref(),
        id,
        ExecRequest::new(
            ExecSpec::new(["/bin/sh", "-c", script]),
            Duration::from_secs(30),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("exec {script:?} in {id}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub async fn create_exec_delete(h: Harness) {
    let spec = spec(&h, "basic");
    let _guard = Cleanup::new(&h, &spec.id);
    let info = h.driver.create(&spec).await.expect("create");
    assert_eq!(info.id, spec.id);
    assert_eq!(info.status, MachineStatus::Running);
    assert!(info.address.is_some(), "machine has an address: {info:?}");
    assert_eq!(
        info.labels.get("io.rootnroll.test").map(String::as_str),
        Some("basic")
    );
    let out = sh(&h, &spec.id, "echo ok; echo err >&2; exit 3").await;
    assert_eq!(text(&out.stdout), "ok\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(out.exit_code, Some(3));
    assert!(!out.timed_out);
    let out = sh(&h, &spec.id, "hostname").await;
    assert_eq!(text(&out.stdout).trim(), "host-basic");
    let out = sh(&h, &spec.id, "id -u").await;
    assert_eq!(text(&out.stdout).trim(), "0", "root inside the machine");
    h.driver.delete(&spec.id).await.expect("delete");
    assert!(matches!(
        h.driver.inspect(&spec.id).await,
        Err(DriverError::NotFound(_))
    ));
    // Deleting again is not an error: callers retry freely.
    h.driver.delete(&spec.id).await.expect("second delete");
}

pub async fn exec_stdin_env_user_workdir(h: Harness) {
    let spec = spec(&h, "exec");
    let _guard = Cleanup::new(&h, &spec.id);
    h.driver.create(&spec).await.expect("create");
    let mut req = ExecRequest::new(ExecSpec::new(["cat"]), Duration::from_secs(10));
    let payload: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    req.stdin = Some(payload.clone().into());
    let out = collect(h.driver.as_ref(), &spec.id, req)
        .await
        .expect("cat");
    assert_eq!(out.stdout.len(), payload.len(), "binary stdin round trip");
    assert!(out.stdout[..] == payload[..], "bytes unchanged");

    let mut es = ExecSpec::new(["/bin/sh", "-c", "echo $GREETING; pwd; id -u"]);
    es.env.push(("GREETING".into(), "hi there".into()));
    es.workdir = Some("/tmp".into());
    es.user = Some("65534".into());
    let out = collect(
        h.driver.as_ref(),
        &spec.id,
        ExecRequest::new(es, Duration::from_secs(10)),
    )
    .await
    .expect("env exec");
    assert_eq!(text(&out.stdout), "hi there\n/tmp\n65534\n");
}

pub async fn exec_timeout_kills(h: Harness) {
    let spec = spec(&h, "timeout");
    let _guard = Cleanup::new(&h, &spec.id);
    h.driver.create(&spec).await.expect("create");
    let started = std::time::Instant::now();
    let out = collect(
        h.driver.as_ref(),
        &spec.id,
        ExecRequest::new(
            ExecSpec::new(["/bin/sh", "-c", "echo begun; sleep 1000 & sleep 1000"]),
            Duration::from_millis(800),
        ),
    )
    .await
    .expect("exec");
    assert!(out.timed_out);
    assert_eq!(out.exit_code, None);
    assert_eq!(text(&out.stdout), "begun\n");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The killed command and its children are gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ps = sh(&h, &spec.id, "ps -o args 2>/dev/null || ps").await;
    assert!(
        !text(&ps.stdout).contains("sleep 1000"),
        "timed-out processes killed: {}",
        text(&ps.stdout)
    );
}

/// Reads tty output into `seen` until it contains `needle`.
pub async fn read_until(seen: &mut String, output: &mut crate::OutputStream, needle: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.contains(needle) {
            match output.next().await {
                Some(Ok(OutputChunk::Stdout(b))) => seen.push_str(&text(&b)),
                Some(Ok(OutputChunk::Stderr(_))) => panic!("a tty merges stderr"),
                Some(Err(e)) => panic!("output error: {e}"),
                None => panic!("output ended; seen {seen:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}"));
}

pub async fn exec_tty_and_resize(h: Harness) {
    let spec = spec(&h, "tty");
    let _guard = Cleanup::new(&h, &spec.id);
    h.driver.create(&spec).await.expect("create");
    let mut es = ExecSpec::new(["/bin/sh"]);
    es.tty = Some(TtySize { rows: 24, cols: 80 });
    es.env.push(("PS1".into(), "$ ".into()));
    let mut handle = h.driver.exec(&spec.id, es).await.expect("tty exec");
    let mut seen = String::new();
    handle
        .stdin
        .write_all(b"stty size; echo mark-$((40+2))\n")
        .await
        .unwrap();
    read_until(&mut seen, &mut handle.output, "mark-42").await;
    assert!(seen.contains("24 80"), "initial size applied: {seen:?}");
    handle
        .process
        .resize(TtySize {
            rows: 50,
            cols: 132,
        })
        .await
        .expect("resize");
    seen.clear();
    handle
        .stdin
        .write_all(b"stty size; echo mark-$((50+3))\n")
        .await
        .unwrap();
    read_until(&mut seen, &mut handle.output, "mark-53").await;
    assert!(seen.contains("50 132"), "resize applied: {seen:?}");
    handle.stdin.write_all(b"exit 7\n").await.unwrap();
    while handle.output.next().await.is_some() {}
    assert_eq!(handle.process.wait().await.expect("wait"), 7);
}

pub async fn list_and_inspect(h: Harness) {
    let a = spec(&h, "lista");
    let b = spec(&h, "listb");
    let _ga = Cleanup::new(&h, &a.id);
    let _gb = Cleanup::new(&h, &b.id);
    let (ra, rb) = tokio::join!(h.driver.create(&a), h.driver.create(&b));
    let (ra, rb) = (ra.expect("create a"), rb.expect("create b"));
    assert_ne!(ra.address, rb.address, "each machine its own address");
    let listed = h.driver.list().await.expect("list");
    for id in [&a.id, &b.id] {
        let m = listed
            .iter()
            .find(|m| &m.id == id)
            .unwrap_or_else(|| panic!("{id} listed"));
        assert_eq!(m.status, MachineStatus::Running);
        assert_eq!(m.image, h.image);
    }
    let info = h.driver.inspect(&a.id).await.expect("inspect");
    assert_eq!(info.address, ra.address);
    assert!(matches!(
        h.driver.inspect("no-such-machine").await,
        Err(DriverError::NotFound(_))
    ));
    assert!(matches!(
        h.driver
            .exec("no-such-machine", ExecSpec::new(["true"]))
            .await,
        Err(DriverError::NotFound(_))
    ));
}

pub async fn unknown_image_is_refused(h: Harness) {
    let mut s = spec(&h, "noimage");
    s.image = "no-such-image-xyz".into();
    let _guard = Cleanup::new(&h, &s.id);
    match h.driver.create(&s).await {
        Err(DriverError::ImageNotFound(name)) => assert_eq!(name, "no-such-image-xyz"),
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
    assert!(matches!(
        h.driver.inspect(&s.id).await,
        Err(DriverError::NotFound(_))
    ));
}

pub async fn removed_image_keeps_its_machines(h: Harness) {
    let images = h.driver.images();
    let name = unique_id("img");
    let info = images
        .import(&name, &h.rootfs_tar)
        .await
        .unwrap_or_else(|e| panic!("import {}: {e}", h.rootfs_tar.display()));
    assert_eq!(info.name, name);
    let listed = images.list().await.expect("list");
    assert!(
        listed.iter().any(|i| i.name == name),
        "{name} listed after import: {listed:?}"
    );
    let mut before = spec(&h, "imgbefore");
    before.image = name.clone();
    let _gb = Cleanup::new(&h, &before.id);
    h.driver
        .create(&before)
        .await
        .expect("create from the image");

    images.remove(&name).await.expect("remove");
    let listed = images.list().await.expect("list");
    assert!(
        !listed.iter().any(|i| i.name == name),
        "{name} not listed after removal: {listed:?}"
    );
    let mut after = spec(&h, "imgafter");
    after.image = name.clone();
    let _ga = Cleanup::new(&h, &after.id);
    match h.driver.create(&after).await {
        Err(DriverError::ImageNotFound(n)) => assert_eq!(n, name),
        other => panic!("create from a removed image: expected ImageNotFound, got {other:?}"),
    }
    match images.remove(&name).await {
        Err(DriverError::ImageNotFound(n)) => assert_eq!(n, name),
        other => panic!("second removal: expected ImageNotFound, got {other:?}"),
    }

    // The machine started before keeps running, with the image's files.
    let info = h.driver.inspect(&before.id).await.expect("inspect");
    assert_eq!(info.status, MachineStatus::Running);
    let out = sh(
        &h,
        &before.id,
        "cut -d: -f1 /etc/passwd | head -n 1; echo still here",
    )
    .await;
    assert_eq!(
        text(&out.stdout),
        "root\nstill here\n",
        "stderr: {}",
        text(&out.stderr)
    );
    h.driver.delete(&before.id).await.expect("delete");
}

pub async fn memory_limit_kills_process_not_machine(h: Harness) {
    let spec = spec(&h, "oom");
    let _guard = Cleanup::new(&h, &spec.id);
    h.driver.create(&spec).await.expect("create");
    // 64 MiB machine; try to hold 200 MiB in a shell variable-free way: tail buffers it all.
    let out = sh(
        &h,
        &spec.id,
        "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null; echo rc=$?",
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("rc=") && stdout.trim() != "rc=0",
        "hog killed: {stdout:?} {:?}",
        text(&out.stderr)
    );
    let out = sh(&h, &spec.id, "echo alive").await;
    assert_eq!(text(&out.stdout), "alive\n", "machine lives on");
}

pub async fn pids_limit_stops_fork_bomb(h: Harness) {
    let spec = spec(&h, "forkbomb");
    let _guard = Cleanup::new(&h, &spec.id);
    h.driver.create(&spec).await.expect("create");
    // Spawn far more sleepers than the limit (64) allows, in a subshell (a shell exits when
    // a fork fails), then count processes with builtins only: nothing else can fork now.
    let out = sh(
        &h,
        &spec.id,
        "( i=0; while [ $i -lt 200 ]; do sleep 5 & i=$((i+1)); done ) 2>/dev/null; \
         set -- /proc/[0-9]*; echo $#; kill -9 -1",
    )
    .await;
    let n: u64 = text(&out.stdout).trim().parse().unwrap_or(0);
    assert!(
        n > 32 && n <= 64,
        "process count capped at the pids limit: {n} ({:?})",
        text(&out.stderr)
    );
    // The host is fine and the machine still answers once the sleepers are gone.
    let out = sh(&h, &spec.id, "echo alive").await;
    assert_eq!(text(&out.stdout), "alive\n");
}

pub async fn stats_are_plausible(h: Harness) {
    let spec = spec(&h, "stats");
    let _guard = Cleanup::new(&h, &spec.id);
    h.driver.create(&spec).await.expect("create");
    sh(
        &h,
        &spec.id,
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
    )
    .await;
    // Operators see these numbers: every driver must report the machine's own use.
    let s = h
        .driver
        .stats(&spec.id)
        .await
        .expect("stats")
        .expect("the driver reports stats");
    assert!(s.memory_bytes > 0, "{s:?}");
    assert!(s.pids >= 1 && s.pids <= 64, "{s:?}");
    assert!(s.cpu_ns > 0, "{s:?}");
    match h.driver.stats("no-such-machine").await {
        Err(DriverError::NotFound(_)) | Ok(None) => {}
        other => panic!("stats of a missing machine: {other:?}"),
    }
}

/// The static agent: `RNR_AGENT_PATH`, else built with scripts/build-agent.sh (for driver
/// test harnesses that start machines with the agent).
pub fn agent_path() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("RNR_AGENT_PATH").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let out = std::process::Command::new(root.join("scripts/build-agent.sh"))
            .current_dir(&root)
            .output()
            .expect("run scripts/build-agent.sh");
        assert!(
            out.status.success(),
            "scripts/build-agent.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// The driver under test with `exec` going through its agent channel instead of its own
/// exec: the exec tests then hold the agent's execs to the same behaviour. `framed` frames
/// stdio on the channel even where descriptors could pass (as on channels that cannot).
pub struct ViaAgent {
    pub inner: Arc<dyn Driver>,
    pub framed: bool,
}

impl ViaAgent {
    pub fn harness(h: Harness, framed: bool) -> Harness {
        Harness {
            driver: Arc::new(Self {
                inner: h.driver,
                framed,
            }),
            image: h.image,
            rootfs_tar: h.rootfs_tar,
        }
    }
}

#[async_trait]
impl Driver for ViaAgent {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        self.inner.create(spec).await
    }
    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecHandle> {
        let ch = self.inner.agent(id).await?;
        let ch = if self.framed { ch.framed() } else { ch };
        ch.exec(spec).await
    }
    async fn agent(&self, id: &str) -> Result<AgentChannel> {
        self.inner.agent(id).await
    }
    async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        self.inner.inspect(id).await
    }
    async fn delete(&self, id: &str) -> Result<()> {
        self.inner.delete(id).await
    }
    async fn list(&self) -> Result<Vec<MachineInfo>> {
        self.inner.list().await
    }
    fn images(&self) -> &dyn crate::ImageStore {
        self.inner.images()
    }
    async fn stats(&self, id: &str) -> Result<Option<MachineStats>> {
        self.inner.stats(id).await
    }
}

pub async fn agent_exec_stdin_env_user_workdir(h: Harness) {
    exec_stdin_env_user_workdir(ViaAgent::harness(h, false)).await
}
pub async fn agent_exec_timeout_kills(h: Harness) {
    exec_timeout_kills(ViaAgent::harness(h, false)).await
}
pub async fn agent_exec_tty_and_resize(h: Harness) {
    exec_tty_and_resize(ViaAgent::harness(h, false)).await
}
pub async fn framed_exec_stdin_env_user_workdir(h: Harness) {
    exec_stdin_env_user_workdir(ViaAgent::harness(h, true)).await
}
pub async fn framed_exec_timeout_kills(h: Harness) {
    exec_timeout_kills(ViaAgent::harness(h, true)).await
}
pub async fn framed_exec_tty_and_resize(h: Harness) {
    exec_tty_and_resize(ViaAgent::harness(h, true)).await
}

/// Users are resolved inside the machine (its own /etc/passwd), and what cannot start says
/// why and exits 127, through either kind of channel.
pub async fn agent_exec_users_and_failures(h: Harness) {
    let spec = spec(&h, "agentuser");
    let _guard = Cleanup::new(&h, &spec.id);
    h.driver.create(&spec).await.expect("create");
    sh(
        &h,
        &spec.id,
        "echo 'learner:x:1234:1234::/home/learner:/bin/sh' >> /etc/passwd; \
         echo 'staff:x:4321:' >> /etc/group; mkdir -p /home/learner",
    )
    .await;
    for framed in [false, true] {
        let via = ViaAgent::harness(
            Harness {
                driver: h.driver.clone(),
                image: h.image.clone(),
                rootfs_tar: h.rootfs_tar.clone(),
            },
            framed,
        );
        let run = |user: &str, argv: &[&str]| {
            let mut es = ExecSpec::new(argv.iter().copied());
            es.user = Some(user.to_string());
            collect(
                via.driver.as_ref(),
                &spec.id,
                ExecRequest::new(es, Duration::from_secs(10)),
            )
        };
        let out = run("learner", &["/bin/sh", "-c", "id -u; id -g; echo $HOME"])
            .await
            .expect("exec as learner");
        assert_eq!(
            text(&out.stdout),
            "1234
1234
/home/learner
",
            "framed {framed}"
        );
        let out = run("learner:staff", &["id", "-g"]).await.expect("exec");
        assert_eq!(
            text(&out.stdout),
            "4321
"
        );
        let out = run("nosuchuser", &["true"]).await.expect("exec");
        assert_eq!(out.exit_code, Some(127));
        assert!(
            text(&out.stderr).contains("unknown user \"nosuchuser\""),
            "{:?}",
            text(&out.stderr)
        );
        let out = run("root", &["/no/such/program"]).await.expect("exec");
        assert_eq!(out.exit_code, Some(127));
        assert!(text(&out.stderr).contains("/no/such/program"), "{out:?}");
    }
}

/// Session frames read from a link until `want` says a frame is the one.
async fn session_frame(
    output: &mut crate::agent::ChunkStream,
    buf: &mut Vec<u8>,
    mut want: impl FnMut(FromDaemon<'_>) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            while let Some((tag, payload, rest)) =
                frame::split(buf, 4 << 20).expect("a well-formed frame")
            {
                let done = want(FromDaemon::parse(tag, payload).expect("a session frame"));
                let consumed = buf.len() - rest.len();
                buf.drain(..consumed);
                if done {
                    return;
                }
            }
            match output.next().await {
                Some(Ok(b)) => buf.extend_from_slice(&b),
                other => panic!("session link ended: {other:?}"),
            }
        }
    })
    .await
    .expect("the session answered within 10 s")
}

async fn attach(
    h: &Harness,
    id: &str,
    session: &str,
    framed: bool,
) -> (crate::agent::SessionLink, Vec<u8>, Hello) {
    let ch = h.driver.agent(id).await.expect("agent channel");
    let ch = if framed { ch.framed() } else { ch };
    let mut link = ch.session(session, 24, 80).await.expect("attach");
    let mut buf = Vec::new();
    let mut hello = None;
    session_frame(&mut link.output, &mut buf, |f| match f {
        FromDaemon::Hello(h) => {
            hello = Some(h);
            true
        }
        _ => false,
    })
    .await;
    (link, buf, hello.expect("hello"))
}

/// A terminal session outlives the link it was started on: re-attaching (as a gateway
/// does after a restart) finds the same shell and its screen; killing it ends it.
pub async fn agent_session_outlives_its_link(h: Harness) {
    let spec = spec(&h, "session");
    let _guard = Cleanup::new(&h, &spec.id);
    h.driver.create(&spec).await.expect("create");
    for framed in [false, true] {
        let name = if framed { "t-framed" } else { "t-passed" };
        let (mut link, mut buf, hello) = attach(&h, &spec.id, name, framed).await;
        assert_eq!((hello.rows, hello.cols), (24, 80));
        link.input
            .write_all(&ToDaemon::Input(b"echo conf-$((6*7))\r").encode())
            .await
            .unwrap();
        let mut seen = String::new();
        session_frame(&mut link.output, &mut buf, |f| {
            if let FromDaemon::Output(d) = f {
                seen.push_str(&text(d));
            }
            seen.contains("conf-42")
        })
        .await;
        drop(link);
        let (mut link, mut buf, again) = attach(&h, &spec.id, name, framed).await;
        assert_eq!(again.shell_pid, hello.shell_pid, "the same shell");
        link.input
            .write_all(&ToDaemon::SnapshotReq { tag: 9 }.encode())
            .await
            .unwrap();
        let mut screen = Bytes::new();
        session_frame(&mut link.output, &mut buf, |f| match f {
            FromDaemon::Snapshot { tag: 9, screen: s } => {
                screen = Bytes::copy_from_slice(s);
                true
            }
            _ => false,
        })
        .await;
        assert!(
            text(&screen).contains("conf-42"),
            "the screen survives: {screen:?}"
        );
        link.input
            .write_all(&ToDaemon::Kill.encode())
            .await
            .unwrap();
        session_frame(&mut link.output, &mut buf, |f| {
            matches!(f, FromDaemon::Exit { .. })
        })
        .await;
        drop(link);
        let (_link, _, fresh) = attach(&h, &spec.id, name, framed).await;
        assert_ne!(
            fresh.shell_pid, hello.shell_pid,
            "a killed session starts anew"
        );
    }
}

/// A check suite is evaluated inside the machine in one request.
pub async fn agent_check_suite(h: Harness) {
    let spec = spec(&h, "check");
    let _guard = Cleanup::new(&h, &spec.id);
    h.driver.create(&spec).await.expect("create");
    let file = |path: &str| CheckKind::File(FileCheck::exists(path));
    let script = |script: &str| {
        CheckKind::Script(ScriptCheck {
            script: script.into(),
        })
    };
    let suite = Suite {
        checks: vec![
            Check::new("passwd", file("/etc/passwd")),
            Check::new("missing", file("/no/such/file")),
            Check::new("script", script("checks/ok.sh")),
        ],
        scripts: [("checks/ok.sh".into(), "#!/bin/sh\nexit 0\n".into())].into(),
    };
    let outcomes = h
        .driver
        .agent(&spec.id)
        .await
        .expect("agent channel")
        .check(&suite)
        .await
        .expect("check suite");
    let got: Vec<_> = outcomes
        .iter()
        .map(|o| (o.name.as_str(), o.status))
        .collect();
    assert_eq!(
        got,
        [
            ("passwd", Status::Passed),
            ("missing", Status::Failed),
            ("script", Status::Passed)
        ]
    );
}

/// A machine started without an agent says so, and nothing else breaks.
pub async fn agent_absent_is_reported(h: Harness) {
    let spec = spec(&h, "noagent");
    let _guard = Cleanup::new(&h, &spec.id);
    h.driver.create(&spec).await.expect("create");
    match h.driver.agent(&spec.id).await {
        Err(DriverError::NoAgent(id)) => assert_eq!(id, spec.id),
        other => panic!("expected NoAgent, got {other:?}"),
    }
    assert_eq!(sh(&h, &spec.id, "echo ok").await.exit_code, Some(0));
}

/// Instantiates every conformance test for a driver. `$setup` is a path to an
/// `async fn() -> Harness`; with `no_agent`, for a driver whose machines run without the
/// agent; with `no_limits`, for a driver that enforces no resource limits (the fake driver
/// for tests: never a backend machines of learners run on). `no_limits, users_need_root`
/// is for a driver whose machines have users other than root only when it runs as root
/// (the fake driver): the tests that run commands as other users are generated
/// `#[ignore]`d with the reason, to be run as root with `--ignored`.
#[macro_export]
macro_rules! conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@core $setup);
        $crate::conformance_tests!(@users $setup);
        $crate::conformance_tests!(@limits $setup);
        $crate::conformance_tests!(@agent $setup);
    };
    ($setup:path, no_agent) => {
        $crate::conformance_tests!(@core $setup);
        $crate::conformance_tests!(@each $setup; exec_stdin_env_user_workdir);
        $crate::conformance_tests!(@limits $setup);
        $crate::conformance_tests!(@each $setup; agent_absent_is_reported);
    };
    ($setup:path, no_limits) => {
        $crate::conformance_tests!(@core $setup);
        $crate::conformance_tests!(@users $setup);
        $crate::conformance_tests!(@agent $setup);
    };
    ($setup:path, no_limits, users_need_root) => {
        $crate::conformance_tests!(@core $setup);
        $crate::conformance_tests!(@agent $setup);
        $crate::conformance_tests!(@ignored $setup;
            "run as another user: only root exists in machines of a driver not run by root; \
             scripts/test.sh runs these as root";
            exec_stdin_env_user_workdir,
            agent_exec_stdin_env_user_workdir,
            framed_exec_stdin_env_user_workdir,
            agent_exec_users_and_failures
        );
    };
    (@users $setup:path) => {
        $crate::conformance_tests!(@each $setup;
            exec_stdin_env_user_workdir,
            agent_exec_stdin_env_user_workdir,
            framed_exec_stdin_env_user_workdir,
            agent_exec_users_and_failures
        );
    };
    (@agent $setup:path) => {
        $crate::conformance_tests!(@each $setup;
            agent_exec_timeout_kills,
            agent_exec_tty_and_resize,
            framed_exec_timeout_kills,
            framed_exec_tty_and_resize,
            agent_session_outlives_its_link,
            agent_check_suite
        );
    };
    (@limits $setup:path) => {
        $crate::conformance_tests!(@each $setup;
            memory_limit_kills_process_not_machine,
            pids_limit_stops_fork_bomb
        );
    };
    (@core $setup:path) => {
        $crate::conformance_tests!(@each $setup;
            create_exec_delete,
            exec_timeout_kills,
            exec_tty_and_resize,
            list_and_inspect,
            unknown_image_is_refused,
            removed_image_keeps_its_machines,
            stats_are_plausible
        );
    };
    (@ignored $setup:path; $why:literal; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = $why]
            async fn $name() {
                $crate::conformance::$name($setup().await).await;
            }
        )*
    };
    (@each $setup:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::$name($setup().await).await;
            }
        )*
    };
}

//! Native-driver specifics beyond the shared suite: init robustness, cgroup limits as the
//! host sees them, adoption by a new driver (and the machine's pin with it), network
//! isolation, user namespaces, the per-machine disk quota, image versions outliving their
//! image for running machines, and that nothing leaks into the host's mount table.
//! Needs root, crun, iproute2, iptables, nftables, /bin/busybox (busybox-static) and
//! mkfs.btrfs (btrfs-progs).

mod common;

use common::{config, driver, Flavour, IMAGE};
use rnr_driver::{
    collect, Driver, DriverError, ExecRequest, ExecSpec, Limits, MachineSpec, MachineStatus,
    NetworkSpec,
};
use rnr_driver_native::{DiskMode, NativeDriver};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn spec(tag: &str) -> MachineSpec {
    MachineSpec {
        id: format!(
            "n{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ),
        image: IMAGE.into(),
        hostname: tag.into(),
        limits: Limits {
            memory_mib: 64,
            cpu_millis: 500,
            pids: 64,
        },
        network: NetworkSpec::default(),
        labels: BTreeMap::new(),
    }
}

async fn sh(d: &NativeDriver, id: &str, script: &str) -> (Option<i64>, String, String) {
    let out = collect(
        d,
        id,
        ExecRequest::new(
            ExecSpec::new(["/bin/sh", "-c", script]),
            Duration::from_secs(20),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("exec {script:?} in {id}: {e}"));
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count()
}

fn cgroup_file(d: &NativeDriver, ctrl: &str, id: &str, file: &str) -> String {
    let owner: String = d
        .config()
        .owner
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let p = d
        .config()
        .cgroup_root
        .join(ctrl)
        .join(format!("rnr-{owner}"))
        .join(id)
        .join(file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_survives_kill_all_and_reaps() {
    let d = driver(Flavour::Plain).await;
    let s = spec("killall");
    let mounts = mount_count();
    d.create(&s).await.expect("create");
    assert_eq!(
        mount_count(),
        mounts,
        "no mount of the machine in the host's table"
    );
    let (code, _, _) = sh(&d, &s.id, "kill -9 -1; true").await;
    assert!(code.is_some());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        d.inspect(&s.id).await.unwrap().status,
        MachineStatus::Running
    );
    // Orphans are reaped by init: no zombies linger.
    let (_, out, _) = sh(
        &d,
        &s.id,
        "sh -c 'sleep 0.1 &'; sleep 0.5; cat /proc/[0-9]*/stat | grep -c ' Z ' || true",
    )
    .await;
    assert_eq!(out.trim(), "0", "zombies: {out}");
    d.delete(&s.id).await.expect("delete");
}

/// With an agent, PID 1 is `rnr-agent init` and forks every exec itself (no runtime
/// process in between), and the learner's root can neither reach its socket nor its
/// descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execs_go_through_the_agent_out_of_the_learners_reach() {
    for flavour in [Flavour::Plain, Flavour::Userns] {
        let d = driver(flavour).await;
        let s = spec("agent");
        d.create(&s).await.expect("create");
        let (code, out, err) = sh(
            &d,
            &s.id,
            "tr '\\0' ' ' < /proc/1/cmdline; echo; echo ppid=$PPID; \
             readlink /proc/1/fd/3 >/dev/null 2>&1 && echo fd-resolved; \
             cat /proc/1/environ >/dev/null 2>&1 && echo environ-read; \
             ls /proc/1/root/ >/dev/null 2>&1 && echo root-listed; \
             kill -9 1; sleep 0.1; echo still-here",
        )
        .await;
        assert_eq!(code, Some(0), "{flavour:?}: {out} {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines.first().map(|l| l.trim()),
            Some("/.rnr/rnr-agent init")
        );
        // `sh` is the agent's own child: no `crun exec` process between them.
        assert!(lines.contains(&"ppid=1"), "{flavour:?}: {out}");
        for leak in ["fd-resolved", "environ-read", "root-listed"] {
            assert!(!out.contains(leak), "{flavour:?}: {leak}: {out}");
        }
        assert!(out.contains("still-here"));
        // A program that does not exist: exit 127 and the reason, as a shell would say.
        let (code, _, err) = sh(&d, &s.id, "exec /no/such/program").await;
        assert_eq!(code, Some(127), "{err}");
        let out = collect(
            d.as_ref(),
            &s.id,
            ExecRequest::new(ExecSpec::new(["no-such-program"]), Duration::from_secs(5)),
        )
        .await
        .expect("exec");
        assert_eq!(out.exit_code, Some(127));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not found in $PATH"),
            "{:?}",
            out.stderr
        );
        assert_eq!(
            d.inspect(&s.id).await.unwrap().status,
            MachineStatus::Running
        );
        d.delete(&s.id).await.expect("delete");
    }
}

/// A terminal's session attach through the agent channel is a direct connection to the
/// session daemon, which init started as its own child: no relay process stays in the
/// machine, and a second attach (the gateway reconnecting) finds the same shell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_attach_connects_to_the_daemon_without_a_relay() {
    use futures::StreamExt;
    use rnr_agent_proto::session::FromDaemon;
    let d = driver(Flavour::Userns).await;
    let s = spec("session");
    d.create(&s).await.expect("create");
    async fn hello(link: &mut rnr_driver::agent::SessionLink) -> (u32, bool) {
        let mut got = Vec::new();
        loop {
            if let Some((tag, p, _)) = rnr_agent_proto::frame::split(&got, 1 << 20).unwrap() {
                match FromDaemon::parse(tag, p).unwrap() {
                    FromDaemon::Hello(h) => return (h.shell_pid, h.direct),
                    other => panic!("first frame {other:?}"),
                }
            }
            match tokio::time::timeout(Duration::from_secs(10), link.output.next()).await {
                Ok(Some(Ok(b))) => got.extend_from_slice(&b),
                other => panic!("no hello frame: {other:?}"),
            }
        }
    }
    let attach = || async {
        d.agent(&s.id)
            .await
            .expect("agent channel")
            .session("t-1", 24, 80)
            .await
            .expect("attach")
    };
    let mut first = attach().await;
    assert!(first.fds.is_some(), "the native channel passes descriptors");
    let (pid, direct) = hello(&mut first).await;
    assert!(
        direct,
        "the daemon offers its pty on a channel that passes descriptors"
    );
    let (_, out, _) = sh(
        &d,
        &s.id,
        "ps -o pid,ppid,args | grep 'rnr-agent' | grep -v grep",
    )
    .await;
    let lines: Vec<&str> = out.trim().lines().collect();
    assert_eq!(lines.len(), 2, "init and the daemon only: {out}");
    let daemon: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(daemon[1], "1", "the daemon is init's child: {out}");
    assert!(lines[1].contains("session-daemon t-1"), "{out}");
    drop(first);
    let mut second = attach().await;
    assert_eq!(hello(&mut second).await.0, pid, "the same shell");
    d.delete(&s.id).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_limits_and_fork_bomb() {
    let d = driver(Flavour::Plain).await;
    let s = spec("limits");
    d.create(&s).await.expect("create");
    assert_eq!(
        cgroup_file(&d, "memory", &s.id, "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(cgroup_file(&d, "pids", &s.id, "pids.max"), "64");
    assert_eq!(cgroup_file(&d, "cpu", &s.id, "cpu.cfs_quota_us"), "50000");
    // A fork bomb in the background, detached from our pipes.
    let (code, _, err) = sh(
        &d,
        &s.id,
        "(i=0; while [ $i -lt 300 ]; do sleep 3 & i=$((i+1)); done) >/dev/null 2>&1 </dev/null & echo started",
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let current: u64 = cgroup_file(&d, "pids", &s.id, "pids.current")
        .parse()
        .unwrap();
    assert!(current <= 64, "pids.current {current}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, out, _) = sh(&d, &s.id, "echo alive").await;
    assert_eq!(out, "alive\n");
    d.delete(&s.id).await.expect("delete");
}

/// Whether the pin table of `bridge` has an element for port `veth`.
fn pinned(bridge: &str, veth: &str) -> bool {
    let table = format!("rnr-{bridge}");
    rnr_driver::isolation::listed_pins(&table).contains(&format!("\"{veth}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_by_new_driver_and_cleaned_up() {
    let d = driver(Flavour::Plain).await;
    let s = spec("adopt");
    d.create(&s).await.expect("create");
    let (_, out, _) = sh(&d, &s.id, "echo data > /root/f; cat /root/f").await;
    assert_eq!(out, "data\n");
    // A second driver instance on the same state dir (as after a platform restart).
    let d2 = NativeDriver::new(d.config().clone())
        .await
        .expect("second driver");
    let listed = d2.list().await.unwrap();
    let m = listed
        .iter()
        .find(|m| m.id == s.id)
        .expect("adopted machine listed");
    assert_eq!(m.status, MachineStatus::Running);
    let (_, out, _) = sh(&d2, &s.id, "cat /root/f").await;
    assert_eq!(out, "data\n", "state kept");
    // Another owner on the same state dir sees nothing.
    let mut other = d.config().clone();
    other.owner = "someone-else".into();
    let d3 = NativeDriver::new(other).await.unwrap();
    assert!(d3.list().await.unwrap().iter().all(|m| m.id != s.id));
    assert!(matches!(
        d3.inspect(&s.id).await,
        Err(DriverError::NotFound(_))
    ));
    let veth = {
        let meta = std::fs::read_to_string(
            d.config()
                .state_dir
                .join("run")
                .join("machines")
                .join(&s.id)
                .join("machine.json"),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&meta).unwrap();
        v["veth"].as_str().unwrap().to_string()
    };
    assert!(std::path::Path::new("/sys/class/net").join(&veth).exists());
    // The pin made at create survived the restart (the second driver rewrote the table's
    // chain, not its set) and goes with the machine.
    assert!(pinned(&d.config().bridge, &veth), "machine {} pinned", s.id);
    d2.delete(&s.id).await.expect("delete via adopting driver");
    assert!(
        !pinned(&d.config().bridge, &veth),
        "pin of {} deleted",
        s.id
    );
    d2.delete(&s.id).await.expect("idempotent delete");
    assert!(matches!(
        d.inspect(&s.id).await,
        Err(DriverError::NotFound(_))
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !std::path::Path::new("/sys/class/net").join(&veth).exists(),
        "veth gone"
    );
    assert!(!d
        .config()
        .state_dir
        .join("run")
        .join("machines")
        .join(&s.id)
        .exists());
}

/// Names in `dir`, sorted; none when it does not exist.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_versions_live_as_long_as_their_machines() {
    let d = driver(Flavour::Plain).await;
    let tar = common::tiny_tar().await;
    let images_dir = d.config().state_dir.join("images");
    let name = format!("vers-{}", std::process::id());
    let dir = images_dir.join(&name);
    let versions = || -> Vec<String> {
        entries(&dir)
            .into_iter()
            .filter(|e| e.starts_with("r-"))
            .collect()
    };
    d.images().import(&name, &tar).await.expect("import");
    let first = versions();
    assert_eq!(first.len(), 1, "{first:?}");
    let mut s = spec("vers");
    s.image = name.clone();
    d.create(&s).await.expect("create");

    // Re-imported: the running machine's version stays beside the new one.
    d.images().import(&name, &tar).await.expect("re-import");
    let both = versions();
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both.contains(&first[0]), "{both:?}");
    // Removed: the unused new version goes at once, the machine's stays.
    d.images().remove(&name).await.expect("remove");
    assert_eq!(versions(), first);
    assert!(!dir.join("rootfs").exists());
    let (code, out, _) = sh(&d, &s.id, "ls /bin/busybox").await;
    assert_eq!((code, out.as_str()), (Some(0), "/bin/busybox\n"));

    // Its last machine deleted, nothing of the image is left.
    d.delete(&s.id).await.expect("delete");
    assert!(!dir.exists(), "{:?}", entries(&dir));
    let left = entries(&images_dir);
    assert!(left.iter().all(|e| !e.starts_with(".gc-")), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_isolation() {
    let d = driver(Flavour::Plain).await;
    let (a, b) = (spec("neta"), spec("netb"));
    let ia = d.create(&a).await.expect("create a");
    let ib = d.create(&b).await.expect("create b");
    let (addr_a, addr_b) = (ia.address.unwrap(), ib.address.unwrap());
    let (_, out, _) = sh(&d, &a.id, "ip -4 addr show eth0").await;
    assert!(out.contains(&addr_a.to_string()), "{out}");
    // A web server in each machine.
    for m in [&a.id, &b.id] {
        let (code, _, err) = sh(
            &d,
            m,
            "mkdir -p /www && echo hello > /www/index.html && httpd -p 8080 -h /www",
        )
        .await;
        assert_eq!(code, Some(0), "{err}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The host reaches machine ports.
    let mut s = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect((addr_a, 8080)),
    )
    .await
    .expect("host → machine connect in time")
    .expect("host → machine connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.contains("hello"), "{resp}");
    // Positive control: a machine reaches its own server through its address.
    // (busybox-static's wget crashes in its resolver, so connections are probed with nc.)
    let probe = |addr: String, port: u16| {
        format!(
            "if nc -w 2 {addr} {port} </dev/null >/dev/null 2>&1; then echo open; else echo closed; fi"
        )
    };
    let (_, out, _) = sh(&d, &a.id, &probe(addr_a.to_string(), 8080)).await;
    assert_eq!(out.trim(), "open", "self-reach");
    // Machine → machine is blocked.
    let (_, out, _) = sh(&d, &a.id, &probe(addr_b.to_string(), 8080)).await;
    assert_eq!(out.trim(), "closed", "machine reached a neighbour");
    // Machine → host services (on the gateway address) is blocked.
    let gw = rnr_driver_native::Subnet::parse(&d.config().subnet)
        .unwrap()
        .gateway(0);
    let listener = tokio::net::TcpListener::bind((gw, 0))
        .await
        .expect("bind on gateway");
    let port = listener.local_addr().unwrap().port();
    let accept = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(4), listener.accept())
            .await
            .is_ok()
    });
    let (_, out, _) = sh(&d, &a.id, &probe(gw.to_string(), port)).await;
    assert_eq!(out.trim(), "closed", "machine reached a host service");
    assert!(!accept.await.unwrap(), "machine reached a host service");
    // Machines allowed out get addresses from the subnet's upper half (one static rule).
    // This driver's /21 is two bridge segments (a bridge takes at most 1,024 ports): the
    // outbound half is the second, on a bridge of its own with its own gateway.
    let mut o = spec("netout");
    o.network.outbound = true;
    let io = d.create(&o).await.expect("create outbound");
    let subnet = rnr_driver_native::Subnet::parse(&d.config().subnet).unwrap();
    let upper = subnet.addr(subnet.size() / 2);
    let addr_o = match io.address {
        Some(std::net::IpAddr::V4(v4)) => {
            assert!(v4 >= upper, "{v4} in the outbound half");
            v4
        }
        other => panic!("address {other:?}"),
    };
    assert_eq!(subnet.segments(), 2);
    let gw1 = subnet.gateway(1);
    let (_, out, _) = sh(&d, &o.id, "ip route").await;
    assert!(out.contains(&format!("default via {gw1}")), "{out}");
    let second = format!("{}-1", d.config().bridge);
    assert!(
        std::path::Path::new("/sys/class/net")
            .join(&second)
            .exists(),
        "bridge {second}"
    );
    let (code, _, err) = sh(
        &d,
        &o.id,
        "mkdir -p /www && echo out > /www/index.html && httpd -p 8080 -h /www",
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect((addr_o, 8080)),
    )
    .await
    .expect("host → second segment in time")
    .expect("host → second segment");
    // Across segments, machines stay apart both ways, and the second segment's gateway
    // leads to no host service either.
    let (_, out, _) = sh(&d, &o.id, &probe(addr_a.to_string(), 8080)).await;
    assert_eq!(out.trim(), "closed", "machine reached another segment");
    let (_, out, _) = sh(&d, &a.id, &probe(addr_o.to_string(), 8080)).await;
    assert_eq!(out.trim(), "closed", "machine reached another segment");
    let listener = tokio::net::TcpListener::bind((gw1, 0))
        .await
        .expect("bind on the second gateway");
    let port = listener.local_addr().unwrap().port();
    let accept = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(4), listener.accept())
            .await
            .is_ok()
    });
    let (_, out, _) = sh(&d, &o.id, &probe(gw1.to_string(), port)).await;
    assert_eq!(out.trim(), "closed", "machine reached a host service");
    assert!(!accept.await.unwrap(), "machine reached a host service");
    for m in [&a.id, &b.id, &o.id] {
        d.delete(m).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespace_root_is_unprivileged_on_host() {
    let d = driver(Flavour::Userns).await;
    let s = spec("userns");
    let info = d.create(&s).await.expect("create with userns");
    assert_eq!(info.status, MachineStatus::Running);
    let (_, out, err) = sh(&d, &s.id, "id -u; touch /root/x /etc/y && echo wrote; stat -c %u /bin/busybox; cat /proc/self/uid_map").await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first().copied(), Some("0"), "{out} {err}");
    assert_eq!(lines.get(1).copied(), Some("wrote"), "{out} {err}");
    assert_eq!(
        lines.get(2).copied(),
        Some("0"),
        "image files owned by root inside: {out}"
    );
    let base = d.config().uid_base;
    assert!(out.contains(&base.to_string()), "uid map: {out}");
    // On the host, the machine's init runs as the range's first uid.
    let meta = std::fs::read_to_string(
        d.config()
            .state_dir
            .join("run")
            .join("machines")
            .join(&s.id)
            .join("machine.json"),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&meta).unwrap();
    let pid = v["init_pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let host_uid: u64 = uid_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(host_uid >= u64::from(base), "{uid_line}");
    // A second machine gets a different range.
    let s2 = spec("userns2");
    d.create(&s2).await.expect("second userns machine");
    let (_, out2, _) = sh(&d, &s2.id, "cat /proc/self/uid_map").await;
    assert_ne!(
        out2.split_whitespace().nth(1),
        out.lines().last().and_then(|l| l.split_whitespace().nth(1))
    );
    d.delete(&s.id).await.unwrap();
    d.delete(&s2.id).await.unwrap();
}

/// Loop devices backed by `image`, from sysfs.
fn loops_backed_by(image: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(b.trim()) == image {
                out.push(name);
            }
        }
    }
    out
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_quota_contains_a_full_disk() {
    // 96 MiB btrfs quota; the machine has 64 MiB of memory.
    let d = driver(Flavour::SmallDisk).await;
    assert_eq!(d.disk_mode(), Some(DiskMode::Btrfs));
    assert_eq!(
        config(Flavour::SmallDisk, Path::new("/x")).disk_mib,
        Some(96)
    );
    let s = spec("disk");
    d.create(&s).await.expect("create");
    use std::os::unix::fs::MetadataExt;
    let sub = d.config().state_dir.join("disks").join(&s.id);
    let md = std::fs::metadata(&sub).expect("the machine's subvolume");
    assert_eq!(md.ino(), 256, "{} is a btrfs subvolume", sub.display());
    // More than the machine's memory fits: the quota is a disk's, not the memory limit.
    let (_, out, _) = sh(
        &d,
        &s.id,
        "dd if=/dev/zero of=/root/a bs=1M count=80 2>&1; echo rc=$?",
    )
    .await;
    assert!(out.contains("rc=0"), "80 MiB in a 96 MiB quota: {out}");
    let (_, out, _) = sh(
        &d,
        &s.id,
        "dd if=/dev/zero of=/root/b bs=1M count=64 2>&1; echo rc=$?; stat -c size=%s /root/b",
    )
    .await;
    assert!(!out.contains("rc=0"), "past the 96 MiB quota: {out}");
    assert!(
        out.to_lowercase().contains("quota exceeded"),
        "EDQUOT, not an OOM kill: {out}"
    );
    let size: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("size="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(u64::MAX);
    assert!(size < 16 << 20, "stopped near the quota: {out}");
    let (_, out, _) = sh(&d, &s.id, "rm /root/a /root/b; echo fine > /ok; cat /ok").await;
    assert_eq!(out, "fine\n");
    // Room again after deleting: the quota follows usage.
    let (_, out, _) = sh(
        &d,
        &s.id,
        "dd if=/dev/zero of=/root/c bs=1M count=80 2>&1; echo rc=$?",
    )
    .await;
    assert!(out.contains("rc=0"), "space freed by rm: {out}");
    d.delete(&s.id).await.unwrap();
    assert!(!sub.exists(), "subvolume deleted with the machine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmpfs_disk_mode_fallback() {
    let d = driver(Flavour::Tmpfs).await;
    assert_eq!(d.disk_mode(), Some(DiskMode::Tmpfs));
    let s = spec("tmpfsdisk");
    d.create(&s).await.expect("create");
    let (_, out, _) = sh(
        &d,
        &s.id,
        "dd if=/dev/zero of=/big bs=1M count=64 2>&1; echo rc=$?",
    )
    .await;
    assert!(!out.contains("rc=0"), "16 MiB tmpfs: {out}");
    let (_, out, _) = sh(&d, &s.id, "rm /big; echo fine > /ok; cat /ok").await;
    assert_eq!(out, "fine\n");
    assert!(
        !d.config().state_dir.join("disks").exists(),
        "no btrfs pool in tmpfs mode"
    );
    d.delete(&s.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_pool_torn_down_without_leftovers() {
    let d = driver(Flavour::Scratch).await;
    let state = d.config().state_dir.clone();
    let image = std::fs::canonicalize(state.join("disk.img")).expect("pool image");
    let loops = loops_backed_by(&image);
    assert_eq!(loops.len(), 1, "one loop device");
    let dio = std::fs::read_to_string(format!("/sys/block/{}/loop/dio", loops[0])).unwrap();
    eprintln!("pool on {} (direct I/O: {})", loops[0], dio.trim());
    // The pool and the run/ tmpfs (the machines' transient state).
    assert_eq!(
        mounts_under(&state).len(),
        2,
        "the pool's mount and run/: {:?}",
        mounts_under(&state)
    );
    // A second driver on the same state dir (a restart) reuses the mounted pool.
    let d2 = NativeDriver::open(d.config().clone()).expect("reopen");
    assert_eq!(d2.disk_mode(), Some(DiskMode::Btrfs));
    assert_eq!(loops_backed_by(&image).len(), 1, "still one loop device");
    assert_eq!(mounts_under(&state).len(), 2, "still the same two mounts");
    let s = spec("pool");
    d.create(&s).await.expect("create");
    let (_, out, _) = sh(&d, &s.id, "echo kept > /root/f; cat /root/f").await;
    assert_eq!(out, "kept\n");
    d.delete(&s.id).await.unwrap();
    d.teardown().await;
    // The loop device detaches itself once the last reference to the pool is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !loops_backed_by(&image).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        mounts_under(&state),
        Vec::<String>::new(),
        "nothing mounted"
    );
    assert_eq!(
        loops_backed_by(&image),
        Vec::<String>::new(),
        "loop device detached"
    );
    // Opening again remounts the existing image.
    let d3 = NativeDriver::open(d.config().clone()).expect("reopen after teardown");
    assert_eq!(loops_backed_by(&image).len(), 1);
    d3.teardown().await;
    assert_eq!(
        mounts_under(&state),
        Vec::<String>::new(),
        "nothing mounted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profile_refuses_what_capabilities_do_not() {
    // Twice per flavour: the first start compiles the profile, later ones reuse crun's
    // compiled filter (run.oci.seccomp_bpf_data); both must bite alike.
    let mut reused = Vec::new();
    for f in [
        Flavour::Plain,
        Flavour::Plain,
        Flavour::Userns,
        Flavour::Userns,
    ] {
        let d = driver(f).await;
        let s = spec("seccomp");
        d.create(&s).await.expect("create");
        // crun's copy (the bundle's is removed once the machine runs).
        let config = std::fs::read_to_string(
            d.config()
                .state_dir
                .join("run")
                .join("crun")
                .join(&s.id)
                .join("config.json"),
        )
        .expect("config.json");
        let precompiled = config.contains("run.oci.seccomp_bpf_data");
        assert!(
            precompiled || !reused.contains(&f),
            "{f:?}: the second start reuses the compiled filter"
        );
        reused.push(f);
        let (_, out, _) = sh(&d, &s.id, "grep -E '^Seccomp:' /proc/self/status").await;
        assert_eq!(out.split_whitespace().nth(1), Some("2"), "filtered: {out}");
        // A nested user namespace needs no capability, so only the profile refuses it
        // (inside it, the learner would hold every capability over new namespaces).
        let (_, out, _) = sh(
            &d,
            &s.id,
            "unshare -U true 2>&1; echo rc=$?; unshare -n true 2>&1; echo rc=$?",
        )
        .await;
        assert!(!out.contains("rc=0"), "{f:?}: namespaces refused: {out}");
        assert!(
            out.contains("Operation not permitted"),
            "{f:?}: EPERM, as from the profile: {out}"
        );
        // What the profile must leave alone: PER_LINUX32, threads and processes. (Like
        // Docker's without CAP_SYS_ADMIN, it refuses unshare(2) altogether.)
        let (_, out, err) = sh(
            &d,
            &s.id,
            "linux32 uname -m; unshare true 2>/dev/null || echo no-unshare; (true) && echo forked",
        )
        .await;
        assert_eq!(out, "i686\nno-unshare\nforked\n", "{f:?}: {err}");
        d.delete(&s.id).await.unwrap();
    }
}

/// crun silently skips system calls its libseccomp does not know. In an allow-list that
/// leaves them refused, which is safe but must stay deliberate: every name the profile
/// refuses with an errno of its own (clone3's ENOSYS) must resolve in the host's libseccomp
/// (the one crun links to), and the only allowed names it may lack are calls newer than it.
#[test]
fn seccomp_profile_names_are_known_to_libseccomp() {
    // Linux 6.8 to 6.13's calls (and riscv's), unknown to Debian bookworm's libseccomp
    // 2.5.4: refused with EPERM on such a host, allowed with a newer libseccomp.
    const NEWER_THAN_LIBSECCOMP: &[&str] = &[
        "getxattrat",
        "listmount",
        "listxattrat",
        "lsm_get_self_attr",
        "lsm_list_modules",
        "lsm_set_self_attr",
        "mseal",
        "removexattrat",
        "riscv_hwprobe",
        "setxattrat",
        "statmount",
        "uretprobe",
    ];
    // SAFETY: dlopen/dlsym with NUL-terminated names; the symbol is used with the
    // signature libseccomp documents, `int seccomp_syscall_resolve_name(const char *)`.
    let resolve = unsafe {
        let lib = libc::dlopen(c"libseccomp.so.2".as_ptr(), libc::RTLD_NOW);
        assert!(!lib.is_null(), "libseccomp.so.2 (crun's) not found");
        let sym = libc::dlsym(lib, c"seccomp_syscall_resolve_name".as_ptr());
        assert!(!sym.is_null(), "seccomp_syscall_resolve_name");
        std::mem::transmute::<*mut libc::c_void, extern "C" fn(*const libc::c_char) -> libc::c_int>(
            sym,
        )
    };
    let profile = rnr_driver_native::seccomp_profile();
    let mut names = 0;
    for rule in profile["syscalls"].as_array().unwrap() {
        let allows = rule["action"] == "SCMP_ACT_ALLOW";
        for name in rule["names"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            let c = std::ffi::CString::new(name).unwrap();
            // -1 is __NR_SCMP_ERROR; other negative numbers are calls another ABI has.
            let known = resolve(c.as_ptr()) != -1;
            assert!(
                known || (allows && NEWER_THAN_LIBSECCOMP.contains(&name)),
                "libseccomp does not know {name} ({})",
                rule["action"]
            );
            names += 1;
        }
    }
    assert!(names > 300, "{names} names");
}

//! The isolation suite every driver must pass: a hostile root learner inside a machine
//! tries to exhaust the host (fork bomb, memory, disk, CPU), to reach other machines, the
//! platform's API and the host's services (through the bridge's gateway address and every
//! other host address), to mount filesystems, load kernel modules, write /proc/sys and
//! /sys, reboot, escape through /proc/1/root or a device node, reach the kernel through
//! system calls a machine has no business making (on each of x86-64's three entry
//! points), dump core, exhaust the host's ptys, and make the host read a hostile
//! /etc/passwd (a FIFO, /dev/zero, a huge file, a symlink out of the machine); and on the
//! network (`isolation_net`): IPv6, router advertisements, raw sockets, forged sources, ARP
//! spoofing, and with outbound access the metadata service, private ranges, SMTP and
//! floods of connections. Each attack must be contained, and a neighbouring machine's
//! interactive shell must answer `echo` within 50 ms (`RNR_ISOLATION_ECHO_MS`) all the
//! while.
//!
//! A driver crate instantiates it with `rnr_driver::isolation_tests!(setup);`, `setup`
//! being the same `async fn() -> Harness` as for the conformance suite.

pub mod probe;
pub use crate::isolation_net::{
    arp_spoofing_without_effect, ipv6_host_listener_unreachable, listed_pins, metadata_unreachable,
    outbound_rate_limited, private_ranges_and_smtp_unreachable, raw_sockets_refused,
    router_advertisement_ignored, spoofed_sources_dropped,
};

use crate::conformance::{read_until, spec, Cleanup, Harness};
use crate::{collect, ExecOutcome, ExecRequest, ExecSpec, MachineSpec, TtySize};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `script` as root in machine `id`, killed after `timeout`.
pub(crate) async fn attack(h: &Harness, id: &str, script: &str, timeout: Duration) -> ExecOutcome {
    collect(
        h.driver.as_ref(),
        id,
        ExecRequest::new(ExecSpec::new(["/bin/sh", "-c", script]), timeout),
    )
    .await
    .unwrap_or_else(|e| panic!("exec {script:?} in {id}: {e}"))
}

/// Fewest echoes a neighbour must answer per attack.
const MIN_PROBES: usize = 10;

/// An interactive shell in a neighbouring machine, probed with `echo` every 20 ms while
/// an attack runs; records each round trip.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    probes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<Duration>>,
    _guard: Cleanup,
}

impl Watchdog {
    /// Creates the neighbour and starts probing it.
    pub async fn start(h: &Harness) -> Self {
        let s = spec(h, "neighbour");
        let guard = Cleanup::new(h, &s.id);
        h.driver.create(&s).await.expect("create neighbour");
        let mut es = ExecSpec::new(["/bin/sh"]);
        es.tty = Some(TtySize { rows: 24, cols: 80 });
        es.env.push(("PS1".into(), "$ ".into()));
        let mut shell = h.driver.exec(&s.id, es).await.expect("neighbour shell");
        // Warm up: the first answer includes the shell's own start.
        let mut seen = String::new();
        shell.stdin.write_all(b"echo $((1+99999))\n").await.unwrap();
        read_until(&mut seen, &mut shell.output, "100000").await;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let probes = Arc::new(AtomicUsize::new(0));
        let count = probes.clone();
        let task = tokio::spawn(async move {
            let mut times = Vec::new();
            let mut n: u64 = 100_001;
            while !flag.load(Ordering::Relaxed) {
                let mut seen = String::new();
                let started = Instant::now();
                // The typed line echoes back as `$((n-100000+100000))`, never as `n`.
                let cmd = format!("echo $(({}+100000))\n", n - 100_000);
                shell.stdin.write_all(cmd.as_bytes()).await.unwrap();
                read_until(&mut seen, &mut shell.output, &n.to_string()).await;
                times.push(started.elapsed());
                count.fetch_add(1, Ordering::Relaxed);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = shell.stdin.write_all(b"exit\n").await;
            times
        });
        Self {
            stop,
            probes,
            task,
            _guard: guard,
        }
    }

    /// Stops probing; [`Probes::assert_prompt`] then checks the neighbour answered in time
    /// throughout (after the attack's own containment was checked).
    pub async fn finish(self, attack: &str) -> Probes {
        // Quick attacks: keep probing a little after them, to see their after-effects too.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.probes.load(Ordering::Relaxed) < MIN_PROBES && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let times = self.task.await.expect("watchdog task");
        Probes {
            attack: attack.to_string(),
            times,
        }
    }
}

/// The neighbour's echo round trips during one attack.
#[must_use = "call assert_prompt"]
pub struct Probes {
    attack: String,
    times: Vec<Duration>,
}

impl Probes {
    pub fn assert_prompt(self) {
        let Self { attack, times } = self;
        let limit_ms: u128 = std::env::var("RNR_ISOLATION_ECHO_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50);
        let worst = times.iter().max().copied().unwrap_or_default();
        eprintln!(
            "{attack}: neighbour answered {} echoes, worst {worst:?}",
            times.len()
        );
        assert!(
            times.len() >= MIN_PROBES,
            "{attack}: neighbour probed only {} times",
            times.len()
        );
        assert!(
            worst.as_millis() <= limit_ms,
            "{attack}: neighbour's echo took {worst:?} (limit {limit_ms} ms) over {} probes",
            times.len()
        );
    }
}

/// The attacker's machine (deleted on drop) and the watchdog on its neighbour.
pub(crate) async fn setup(h: &Harness, tag: &str) -> (String, Cleanup, Watchdog) {
    setup_spec(h, spec(h, tag)).await
}

/// [`setup`] with an attacker made to `s`.
pub(crate) async fn setup_spec(h: &Harness, s: MachineSpec) -> (String, Cleanup, Watchdog) {
    let guard = Cleanup::new(h, &s.id);
    h.driver.create(&s).await.expect("create attacker");
    let dog = Watchdog::start(h).await;
    (s.id, guard, dog)
}

fn host_can_fork() {
    let st = std::process::Command::new("true").status();
    assert!(st.map(|s| s.success()).unwrap_or(false), "host can fork");
}

pub async fn fork_bomb(h: Harness) {
    let (id, _g, dog) = setup(&h, "bomb").await;
    let out = attack(
        &h,
        &id,
        "bomb() { bomb | bomb & }; bomb; sleep 4",
        Duration::from_secs(3),
    )
    .await;
    let probes = dog.finish("fork bomb").await;
    host_can_fork();
    drop(out);
    h.driver
        .delete(&id)
        .await
        .expect("a bombed machine can be deleted");
    probes.assert_prompt();
}

pub async fn memory_hog(h: Harness) {
    let (id, _g, dog) = setup(&h, "memhog").await;
    // 64 MiB machine; dd's one 512 MiB buffer must be resident at once.
    let out = attack(
        &h,
        &id,
        "dd if=/dev/zero of=/dev/null bs=512M count=1 2>/dev/null; echo rc=$?",
        Duration::from_secs(20),
    )
    .await;
    let probes = dog.finish("memory hog").await;
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("rc=") && stdout.trim() != "rc=0",
        "hog killed: {stdout:?}"
    );
    let out = attack(&h, &id, "echo alive", Duration::from_secs(10)).await;
    assert_eq!(text(&out.stdout), "alive\n", "machine lives on");
    probes.assert_prompt();
}

pub async fn disk_fill(h: Harness) {
    let (id, _g, dog) = setup(&h, "diskfill").await;
    // Bounded: at most 1 GiB, beyond any per-machine quota the drivers configure.
    let out = attack(
        &h,
        &id,
        "dd if=/dev/zero of=/root/fill bs=1M count=1024 2>/dev/null; echo rc=$?; \
         ls -l /root/fill 2>/dev/null | awk '{print \"size=\" $5}'",
        Duration::from_secs(60),
    )
    .await;
    let probes = dog.finish("disk fill").await;
    let stdout = text(&out.stdout);
    let size: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("size="))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        !stdout.contains("rc=0") && size < 1024 << 20,
        "the write stopped at the machine's quota: {stdout:?}"
    );
    let out = attack(
        &h,
        &id,
        "rm -f /root/fill; echo alive",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(text(&out.stdout), "alive\n", "machine lives on");
    probes.assert_prompt();
}

pub async fn cpu_spin(h: Harness) {
    let (id, _g, dog) = setup(&h, "cpuspin").await;
    let out = attack(
        &h,
        &id,
        "i=0; while [ $i -lt 8 ]; do (while :; do :; done) & i=$((i+1)); done; \
         sleep 3; kill -9 0",
        Duration::from_secs(6),
    )
    .await;
    let probes = dog.finish("spinning every CPU").await;
    drop(out);
    let out = attack(&h, &id, "echo alive", Duration::from_secs(10)).await;
    assert_eq!(text(&out.stdout), "alive\n", "machine lives on");
    probes.assert_prompt();
}

/// Connects with a short timeout; whether the connection was accepted.
pub(crate) fn connects(addr: IpAddr, port: u16) -> bool {
    TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(2)).is_ok()
}

pub async fn other_machines_unreachable(h: Harness) {
    let (id, _g, dog) = setup(&h, "lateral").await;
    let target = spec(&h, "target");
    let _gt = Cleanup::new(&h, &target.id);
    let info = h.driver.create(&target).await.expect("create target");
    let addr = info.address.expect("target address");
    // A persistent listener in the target machine.
    let _listener = h
        .driver
        .exec(
            &target.id,
            ExecSpec::new(["nc", "-ll", "-p", "7777", "-e", "/bin/echo", "hi"]),
        )
        .await
        .expect("listener");
    // Control: the host reaches it (the checker needs that), so the listener is up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !connects(addr, 7777) {
        assert!(Instant::now() < deadline, "host reaches {addr}:7777");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = attack(
        &h,
        &id,
        &format!(
            "nc -w 2 {addr} 7777 </dev/null && echo OPEN; \
             ping -c 1 -W 1 {addr} >/dev/null 2>&1 && echo PING; echo done"
        ),
        Duration::from_secs(15),
    )
    .await;
    let probes = dog.finish("reaching another machine").await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("done"), "{stdout:?}");
    assert!(
        !stdout.contains("OPEN") && !stdout.contains("PING") && !stdout.contains("hi"),
        "machine reached its neighbour {addr}: {stdout:?}"
    );
    probes.assert_prompt();
}

/// Every IPv4 address of the host's interfaces (the bridges' gateways among them).
fn host_addresses() -> Vec<Ipv4Addr> {
    host_ipv4_interfaces().into_iter().map(|(_, a)| a).collect()
}

/// The host's interfaces with an IPv4 address, and the address.
pub(crate) fn host_ipv4_interfaces() -> Vec<(String, Ipv4Addr)> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk read-only and free with freeifaddrs.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut p = ifap;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let name = std::ffi::CStr::from_ptr((*p).ifa_name).to_string_lossy();
                out.push((
                    name.into_owned(),
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                ));
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

pub async fn host_services_unreachable(h: Harness) {
    let (id, _g, dog) = setup(&h, "hostsvc").await;
    // Stands for the platform's API and any host service: listening on every address.
    let listener = TcpListener::bind("0.0.0.0:0").expect("host listener");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    assert!(
        connects(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        "control: the listener answers on the host"
    );
    while listener.accept().is_ok() {}
    let addrs: Vec<String> = host_addresses().iter().map(|a| a.to_string()).collect();
    assert!(!addrs.is_empty());
    // A host that accepts keeps nc waiting for data: `timeout` ends it, the host's
    // accept queue tells.
    let script = format!(
        "gw=$(ip route 2>/dev/null | awk '/^default/ {{print $3}}'); echo gw=$gw; \
         for a in $gw {}; do timeout 2 nc $a {port} </dev/null >/dev/null 2>&1; done; echo done",
        addrs.join(" ")
    );
    let out = attack(&h, &id, &script, Duration::from_secs(60)).await;
    let probes = dog.finish("reaching the host's services").await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("done"), "{stdout:?}");
    if let Ok((_, peer)) = listener.accept() {
        panic!("the machine reached a host service listening on every address (from {peer}); tried {stdout:?}");
    }
    probes.assert_prompt();
}

/// Runs each command, printing `name=<exit code>`; asserts every one failed.
async fn all_refused(h: &Harness, id: &str, what: &str, cmds: &[(&str, &str)]) -> String {
    let script: String = cmds
        .iter()
        .map(|(name, cmd)| format!("{cmd} >/dev/null 2>&1; echo {name}=$?; "))
        .collect();
    let out = attack(h, id, &script, Duration::from_secs(20)).await;
    let stdout = text(&out.stdout);
    for (name, _) in cmds {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{what}: no result for {name}: {stdout:?}"));
        assert_ne!(line.trim(), "0", "{what}: {name} succeeded: {stdout:?}");
    }
    stdout
}

pub async fn mounting_refused(h: Harness) {
    let (id, _g, dog) = setup(&h, "mount").await;
    all_refused(
        &h,
        &id,
        "mounting",
        &[
            ("tmpfs", "mkdir -p /mnt/a && mount -t tmpfs none /mnt/a"),
            ("proc", "mkdir -p /mnt/b && mount -t proc proc /mnt/b"),
            ("bind", "mkdir -p /mnt/c && mount --bind / /mnt/c"),
            ("sysrw", "mount -o remount,rw /sys"),
            ("procsys", "mount -o remount,rw /proc/sys"),
        ],
    )
    .await;
    let probes = dog.finish("mounting filesystems").await;
    probes.assert_prompt();
}

pub async fn kernel_module_refused(h: Harness) {
    let (id, _g, dog) = setup(&h, "module").await;
    let before = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let out = all_refused(
        &h,
        &id,
        "loading a kernel module",
        &[
            (
                "insmod",
                "printf 'not a module' > /tmp/m.ko && insmod /tmp/m.ko",
            ),
            ("modprobe", "modprobe dummy"),
        ],
    )
    .await;
    let probes = dog.finish("loading a kernel module").await;
    drop(out);
    let after = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    assert_eq!(
        before.lines().count(),
        after.lines().count(),
        "host's modules unchanged"
    );
    probes.assert_prompt();
}

pub async fn proc_sys_and_sys_read_only(h: Harness) {
    let (id, _g, dog) = setup(&h, "procsys").await;
    let sysrq = std::fs::read_to_string("/proc/sys/kernel/sysrq").unwrap_or_default();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    all_refused(
        &h,
        &id,
        "writing /proc/sys and /sys",
        &[
            ("sysrq", "echo 1 > /proc/sys/kernel/sysrq"),
            ("dropcaches", "echo 3 > /proc/sys/vm/drop_caches"),
            (
                "corepattern",
                "echo '|/tmp/x' > /proc/sys/kernel/core_pattern",
            ),
            ("mtu", "echo 1000 > /sys/class/net/lo/mtu"),
            ("uevent", "echo add > /sys/kernel/uevent_helper"),
        ],
    )
    .await;
    let probes = dog.finish("writing /proc/sys and /sys").await;
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/sysrq").unwrap_or_default(),
        sysrq
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default(),
        hostname
    );
    probes.assert_prompt();
}

pub async fn reboot_refused(h: Harness) {
    let (id, _g, dog) = setup(&h, "reboot").await;
    all_refused(
        &h,
        &id,
        "rebooting",
        &[
            ("reboot", "reboot -f"),
            ("halt", "halt -f"),
            ("poweroff", "poweroff -f"),
            ("sysrq", "echo b > /proc/sysrq-trigger"),
        ],
    )
    .await;
    let probes = dog.finish("rebooting").await;
    let out = attack(&h, &id, "echo alive", Duration::from_secs(10)).await;
    assert_eq!(text(&out.stdout), "alive\n", "machine still runs");
    probes.assert_prompt();
}

pub async fn no_escape_through_proc_or_devices(h: Harness) {
    let (id, _g, dog) = setup(&h, "escape").await;
    // A secret only the host can see.
    let dir = tempfile_dir();
    let secret = format!("secret-{}-{}", std::process::id(), id);
    let secret_path = dir.join("secret");
    std::fs::write(&secret_path, &secret).unwrap();
    let p = secret_path.display();
    let (major, minor) = root_device();
    let script = format!(
        "cat /proc/1/root{p}; for d in /proc/[0-9]*; do cat $d/root{p} $d/cwd{p}; done; \
         mknod /tmp/disk b {major} {minor} && head -c 4096 /tmp/disk | wc -c | sed 's/^/disk=/'; \
         mknod /tmp/mem c 1 1 && head -c 16 /tmp/mem | wc -c | sed 's/^/mem=/'; \
         head -c 16 /dev/mem 2>/dev/null | wc -c | sed 's/^/devmem=/'; echo done"
    );
    let out = attack(&h, &id, &script, Duration::from_secs(20)).await;
    let probes = dog
        .finish("escaping through /proc/1/root or a device node")
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("done"), "{stdout:?}");
    assert!(!stdout.contains(&secret), "host file read: {stdout:?}");
    for l in stdout.lines() {
        if let Some((name, n)) = l.split_once('=') {
            assert_eq!(
                n.trim(),
                "0",
                "{name} device read from the machine: {stdout:?}"
            );
        }
    }
    probes.assert_prompt();
}

/// System calls every driver's machines must be refused, with arguments that keep them
/// harmless should a filter let one through. The native driver's own profile and Docker's
/// default one (as Debian bookworm's engine 20.10 ships it) both refuse them all; Docker
/// 20.10 allows `io_uring_*` and `clock_adjtime`, which the native profile refuses too:
/// the native suite checks those on its own (the set here is the two's intersection).
pub const DENIED_SYSCALLS: &[probe::Call] = &[
    call("acct", &[]),
    call("add_key", &[]),
    call("bpf", &[]),
    call("clock_settime", &[]),
    // CLONE_NEWUSER | SIGCHLD: a user namespace needs no capability, only the filter stops it.
    call("clone", &["0x10000011"]),
    call("clone3", &[]),
    call("create_module", &[]),
    call("delete_module", &[]),
    call("fanotify_init", &[]),
    call("finit_module", &["-1"]),
    call("fsconfig", &["-1"]),
    call("fsmount", &["-1"]),
    call("fsopen", &[]),
    call("fspick", &["-1"]),
    call("get_kernel_syms", &[]),
    call("get_mempolicy", &[]),
    call("init_module", &[]),
    call("ioperm", &[]),
    call("iopl", &[]),
    call("kcmp", &["pid", "pid"]),
    call("kexec_file_load", &["-1", "-1"]),
    call("kexec_load", &[]),
    // KEYCTL_GET_KEYRING_ID of the thread keyring: answers an id where allowed.
    call("keyctl", &["0", "-1"]),
    call("lookup_dcookie", &[]),
    call("mbind", &[]),
    call("mount", &[]),
    call("mount_setattr", &["-1"]),
    call("move_mount", &["-1"]),
    call("name_to_handle_at", &["-100"]),
    call("nfsservctl", &[]),
    call("open_by_handle_at", &["-1"]),
    call("open_tree", &["-1"]),
    call("perf_event_open", &[]),
    // ADDR_NO_RANDOMIZE: turning off the machine's address randomisation.
    call("personality", &["0x40000"]),
    call("pidfd_getfd", &["-1"]),
    call("pivot_root", &[]),
    call("process_madvise", &["-1"]),
    call("query_module", &[]),
    call("quotactl", &[]),
    call("quotactl_fd", &["-1"]),
    call("reboot", &[]),
    call("request_key", &[]),
    call("set_mempolicy", &[]),
    call("set_mempolicy_home_node", &[]),
    call("setdomainname", &[]),
    call("sethostname", &[]),
    call("setns", &["-1"]),
    // Both null: a no-op that succeeds where allowed.
    call("settimeofday", &[]),
    call("stime", &[]),
    call("swapoff", &[]),
    call("swapon", &[]),
    call("syslog", &["3"]),
    call("sysfs", &["2"]),
    call("_sysctl", &[]),
    call("umount", &[]),
    call("umount2", &[]),
    // No flags: a no-op that succeeds where allowed.
    call("unshare", &[]),
    call("uselib", &[]),
    // UFFD_USER_MODE_ONLY: needs no capability.
    call("userfaultfd", &["1"]),
    call("ustat", &[]),
    call("vhangup", &[]),
    call("vm86", &[]),
    call("vm86old", &[]),
];

const fn call(name: &'static str, args: &'static [&'static str]) -> probe::Call {
    probe::Call { name, args }
}

const EPERM: i32 = 1;
const ENOSYS: i32 = 38;
const ENOSPC: i32 = 28;

/// Issues each of `calls` on the 64-bit (`syscall`), i386 (`int $0x80`) and x32 entry
/// points in machine `id` and asserts each is refused: EPERM (the filter; or a capability
/// the machine lacks) or ENOSYS (the filter's answer to clone3, so that libc falls back
/// to clone; on x32, a kernel without the x32 ABI). Allowed calls must still work on the
/// 64-bit and i386 entry points.
pub async fn assert_syscalls_refused(h: &Harness, id: &str, calls: &[probe::Call]) {
    use probe::Answer;
    let mut all = calls.to_vec();
    all.extend([call("getpid", &[]), call("read", &["-1"])]);
    let answers = probe::syscalls(h, id, &all).await;
    let x32_kernel = !matches!(
        answers.get(&("getpid".into(), "x32".into())),
        Some(Answer::Errno(ENOSYS))
    );
    for abi in ["64", "32"] {
        assert!(
            matches!(answers[&("getpid".into(), abi.into())], Answer::Ok(p) if p > 0),
            "getpid works on the {abi} entry point: {answers:?}"
        );
        assert_eq!(
            answers[&("read".into(), abi.into())],
            Answer::Errno(9),
            "read(-1) reaches the kernel (EBADF) on the {abi} entry point"
        );
    }
    let mut refused = Vec::new();
    for c in calls {
        for abi in probe::ABIS {
            let Some(answer) = answers.get(&(c.name.to_string(), abi.to_string())) else {
                continue;
            };
            let why = match answer {
                Answer::Errno(EPERM) => "EPERM: the filter, or a capability the machine lacks",
                Answer::Errno(ENOSYS) if abi == "x32" && !x32_kernel => {
                    "ENOSYS: this kernel has no x32 ABI (the filter let it through)"
                }
                Answer::Errno(ENOSYS) => "ENOSYS: the filter's answer, or a call this kernel lacks",
                other => panic!(
                    "{}({}) on the {abi} entry point of machine {id} was not refused: {other:?}",
                    c.name,
                    c.args.join(", ")
                ),
            };
            refused.push(format!("{} {abi}: {why}", c.name));
        }
    }
    if calls.iter().any(|c| c.name == "clone3") {
        for abi in ["64", "32"] {
            assert_eq!(
                answers[&("clone3".into(), abi.into())],
                Answer::Errno(ENOSYS),
                "clone3 on the {abi} entry point: ENOSYS, for libc to fall back to clone"
            );
        }
    }
    eprintln!(
        "{} calls refused in {id} (x32 ABI in this kernel: {x32_kernel}):\n  {}",
        refused.len(),
        refused.join("\n  ")
    );
}

pub async fn syscalls_refused_on_every_entry_point(h: Harness) {
    let (id, _g, dog) = setup(&h, "syscalls").await;
    probe::install(&h, &id).await;
    assert_syscalls_refused(&h, &id, DENIED_SYSCALLS).await;
    let probes = dog.finish("system calls on three entry points").await;
    let out = attack(&h, &id, "echo alive", Duration::from_secs(10)).await;
    assert_eq!(text(&out.stdout), "alive\n", "machine lives on");
    probes.assert_prompt();
}

pub async fn core_dumps_off(h: Harness) {
    let (id, _g, dog) = setup(&h, "core").await;
    probe::install(&h, &id).await;
    let out = attack(
        &h,
        &id,
        &format!(
            "echo soft-shell=$(ulimit -c) hard-shell=$(ulimit -Hc); \
             ulimit -c unlimited 2>/dev/null && echo raised-shell; \
             mkdir -p /tmp/cores && cd /tmp/cores && {} core; \
             sh -c 'kill -SEGV $$'; echo files=$(ls -A /tmp/cores | wc -l)",
            probe::PATH
        ),
        Duration::from_secs(20),
    )
    .await;
    let probes = dog.finish("dumping core").await;
    let stdout = text(&out.stdout);
    for want in [
        "soft-shell=0 ",
        "hard-shell=0\n",
        "soft=0 hard=0\n",
        "files=0\n",
    ] {
        assert!(stdout.contains(want), "{want:?} in {stdout:?}");
    }
    assert!(
        !stdout.contains("raised-shell"),
        "the hard limit stays 0: {stdout:?}"
    );
    assert!(
        !stdout.contains("raise=0\n"),
        "RLIMIT_CORE cannot be raised: {stdout:?}"
    );
    assert!(
        stdout.contains("signal=11 "),
        "the probe's child crashed: {stdout:?}"
    );
    // With a pipe in core_pattern the kernel hands every crash to the host's helper
    // whatever RLIMIT_CORE says (the helper is told the limit and must honour it).
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if !pattern.starts_with('|') {
        assert!(
            stdout.contains("dumped=0\n"),
            "no core dumped (core_pattern {pattern:?}): {stdout:?}"
        );
    }
    probes.assert_prompt();
}

/// Reads `output` until a whole line containing `needle` has arrived; returns it.
async fn read_line_with(output: &mut crate::OutputStream, needle: &str, what: &str) -> String {
    use futures::StreamExt;
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            // Only whole lines (a tty ends them with \r\n).
            let whole = &seen[..seen.rfind('\n').map_or(0, |i| i + 1)];
            if let Some(line) = whole.lines().find(|l| l.contains(needle)) {
                return Some(line.trim_end_matches('\r').to_string());
            }
            match output.next().await {
                Some(Ok(crate::OutputChunk::Stdout(b))) => seen.push_str(&text(&b)),
                Some(Ok(crate::OutputChunk::Stderr(b))) => seen.push_str(&text(&b)),
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await;
    match found {
        Ok(Some(line)) => line,
        Ok(None) => panic!("{what}: output ended without {needle:?}: {seen:?}"),
        Err(_) => panic!("{what}: no {needle:?} within 60 s: {seen:?}"),
    }
}

pub async fn pty_quota(h: Harness) {
    let (id, _g, dog) = setup(&h, "ptys").await;
    probe::install(&h, &id).await;
    // 4,000 ptys held open at once: more than the host's whole kernel.pty.max (4096, of
    // which 1024 are reserved for the host's own /dev/pts) leaves to machines by default.
    let mut held = h
        .driver
        .exec(&id, ExecSpec::new([probe::PATH, "ptys", "4000", "120"]))
        .await
        .expect("start the pty probe");
    let line = read_line_with(&mut held.output, "opened=", "opening 4,000 ptys").await;
    eprintln!("machine {id}: {line}");
    // While they are held, another machine's new terminal opens, and works.
    let other = spec(&h, "ptyother");
    let _go = Cleanup::new(&h, &other.id);
    h.driver
        .create(&other)
        .await
        .expect("create another machine");
    let mut es = ExecSpec::new(["/bin/sh"]);
    es.tty = Some(TtySize { rows: 24, cols: 80 });
    let terminal =
        tokio::time::timeout(Duration::from_secs(20), h.driver.exec(&other.id, es)).await;
    let mut terminal = match terminal {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => panic!("a terminal to another machine while {line}: {e}"),
        Err(_) => panic!("a terminal to another machine while {line}: no answer in 20 s"),
    };
    let _ = terminal.stdin.write_all(b"echo pty-$((40+2))\n").await;
    let what = format!("a terminal to another machine while {line}");
    read_line_with(&mut terminal.output, "pty-42", &what).await;
    let _ = terminal.stdin.write_all(b"exit\n").await;
    let probes = dog.finish("holding 4,000 ptys").await;
    let _ = held.stdin.write_all(b"x\n").await;
    drop(held);
    let opened: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("opened="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("probe said {line:?}"));
    assert!(
        opened < 4000 && line.contains(&format!("errno={ENOSPC} ")),
        "the machine's ptys stop at its quota with ENOSPC: {line}"
    );
    assert!(opened > 0, "the machine can open a pty at all: {line}");
    eprintln!("pty quota: {line}");
    probes.assert_prompt();
}

/// What an exec as `nobody` may come to while /etc/passwd is hostile: the machine's own
/// user (65534), or a clear refusal (an error, or exit 127, naming the user or the file).
fn assert_clear(case: &str, id: &str, res: &crate::Result<ExecOutcome>, took: Duration) {
    assert!(
        took < Duration::from_secs(10),
        "{case}: an exec as nobody in {id} took {took:?}: {res:?}"
    );
    match res {
        Ok(out) if out.exit_code == Some(0) => assert_eq!(
            text(&out.stdout),
            "65534\n",
            "{case}: the machine's own nobody, never an account read elsewhere"
        ),
        Ok(out) => {
            let err = text(&out.stderr);
            assert!(
                out.exit_code == Some(127) && (err.contains("user") || err.contains("passwd")),
                "{case}: a clear refusal: {out:?}"
            );
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.contains("timeout") && (msg.contains("user") || msg.contains("passwd")),
                "{case}: a clear error: {msg}"
            );
        }
    }
}

pub async fn hostile_account_files(h: Harness) {
    use rnr_agent_proto::check::{Check, CheckKind, Suite, UserCheck};
    let (id, _g, dog) = setup(&h, "passwd").await;
    // A host file that would make `nobody` uid 4242, were the host to follow a symlink
    // out of the machine; /etc/shadow, read as a passwd file, would give its own uids.
    let dir = tempfile_dir();
    let _remove = RemoveDir(dir.clone());
    let fake = dir.join("passwd");
    std::fs::write(&fake, "nobody:x:4242:4242:host:/:/bin/sh\n").unwrap();
    let cases = [
        (
            "a symlink to /dev/zero",
            "ln -s /dev/zero /etc/passwd".to_string(),
        ),
        ("a FIFO", "mkfifo /etc/passwd".to_string()),
        (
            "a 1 GiB sparse file",
            "echo 'nobody:x:65534:65534:nobody:/:/bin/sh' > /etc/passwd \
             && truncate -s 1G /etc/passwd"
                .to_string(),
        ),
        // The host's path, which the machine (rid of its own) then lacks.
        (
            "a symlink to the host's /etc/shadow",
            "rm -f /etc/shadow && ln -s /etc/shadow /etc/passwd".to_string(),
        ),
        (
            "a symlink to a host file",
            format!("ln -s {} /etc/passwd", fake.display()),
        ),
        (
            "a relative symlink climbing out",
            format!(
                "ln -s ../../../../../../../..{} /etc/passwd",
                fake.display()
            ),
        ),
    ];
    let suite = Suite {
        checks: vec![Check::new(
            "nobody",
            CheckKind::User(UserCheck {
                user: "nobody".into(),
                exists: true,
                uid: Some(65534),
                shell: None,
                home: None,
                member_of: Vec::new(),
            }),
        )],
        scripts: Default::default(),
    };
    // The learner's root shell, started while /etc/passwd is sane: with it broken, a
    // runtime may refuse every new exec (runc reads it first, even for root).
    let mut shell = h
        .driver
        .exec(&id, ExecSpec::new(["/bin/sh"]))
        .await
        .expect("a root shell");
    for (n, (case, script)) in cases.iter().enumerate() {
        let line = format!("rm -f /etc/passwd; {script} && echo made-{n}\n");
        shell.stdin.write_all(line.as_bytes()).await.unwrap();
        read_line_with(&mut shell.output, &format!("made-{n}"), case).await;
        let mut es = ExecSpec::new(["id", "-u"]);
        es.user = Some("nobody".into());
        let started = Instant::now();
        let res = collect(
            h.driver.as_ref(),
            &id,
            ExecRequest::new(es, Duration::from_secs(15)),
        )
        .await;
        let took = started.elapsed();
        eprintln!("{case}: exec as nobody in {took:?}: {res:?}");
        assert_clear(case, &id, &res, took);
        let started = Instant::now();
        let checked = tokio::time::timeout(Duration::from_secs(10), async {
            h.driver.agent(&id).await?.check(&suite).await
        })
        .await
        .unwrap_or_else(|_| panic!("{case}: the user check did not end in 10 s"));
        match checked {
            Err(crate::DriverError::NoAgent(_)) => {}
            other => eprintln!(
                "{case}: user check in {:?}: {:?}",
                started.elapsed(),
                other.map(|o| o[0].status)
            ),
        }
        // Whatever did block opening the FIFO (a reader) is let go before going on.
        let release = format!(
            "[ -p /etc/passwd ] && timeout 2 sh -c 'echo > /etc/passwd'; echo released-{n}\n"
        );
        shell.stdin.write_all(release.as_bytes()).await.unwrap();
        read_line_with(&mut shell.output, &format!("released-{n}"), case).await;
    }
    // Sane again, for whatever runs in the machine until it is deleted.
    let restore = "rm -f /etc/passwd; printf 'root:x:0:0:root:/root:/bin/sh\\n\
                   nobody:x:65534:65534:nobody:/:/bin/sh\\n' > /etc/passwd; echo restored\n";
    shell.stdin.write_all(restore.as_bytes()).await.unwrap();
    read_line_with(&mut shell.output, "restored", "restoring /etc/passwd").await;
    let probes = dog.finish("a hostile /etc/passwd").await;
    probes.assert_prompt();
}

/// Removes a host directory of the test's when dropped, a failed assertion included.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rnr-isolation-{}-{}",
        std::process::id(),
        crate::conformance::unique_id("d")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Major and minor number of the host's root filesystem device.
pub(crate) fn root_device() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata("/").map(|m| m.dev()).unwrap_or(0);
    (libc::major(dev), libc::minor(dev))
}
/// The learner tries to put an agent of their own where the platform runs it: /.rnr is a
/// read-only mount, so it can be neither replaced, renamed away, unmounted nor covered;
/// the platform's checks still run with the real agent.
pub async fn agent_cannot_be_replaced(h: Harness) {
    let (id, _g, dog) = setup(&h, "agentswap").await;
    let out = attack(
        &h,
        &id,
        "mkdir -p /tmp/fake && cp /bin/sh /tmp/fake/rnr-agent; \
         mv /.rnr /rnr-moved 2>/dev/null && echo MOVED; \
         cp /bin/sh /.rnr/rnr-agent 2>/dev/null && echo REPLACED; \
         rm -f /.rnr/rnr-agent 2>/dev/null && echo REMOVED; \
         umount /.rnr 2>/dev/null && echo UNMOUNTED; \
         mount -t tmpfs none /.rnr 2>/dev/null && echo COVERED; \
         mount --bind /tmp/fake /.rnr 2>/dev/null && echo BOUND; \
         echo done",
        Duration::from_secs(20),
    )
    .await;
    let probes = dog.finish("agent replacement").await;
    let said = text(&out.stdout);
    assert!(said.contains("done"), "{out:?}");
    for what in [
        "MOVED",
        "REPLACED",
        "REMOVED",
        "UNMOUNTED",
        "COVERED",
        "BOUND",
    ] {
        assert!(!said.contains(what), "/.rnr could be {what}: {said}");
    }
    real_agent_answers(&h, &id).await;
    probes.assert_prompt();
}

/// The platform's checks still run in machine `id`, with the real agent.
pub(crate) async fn real_agent_answers(h: &Harness, id: &str) {
    let check = rnr_agent_proto::check::Check::new(
        "passwd",
        rnr_agent_proto::check::CheckKind::File(rnr_agent_proto::check::FileCheck::exists(
            "/etc/passwd",
        )),
    );
    let suite = rnr_agent_proto::check::Suite {
        checks: vec![check],
        ..Default::default()
    };
    let outcomes = h
        .driver
        .agent(id)
        .await
        .expect("agent channel")
        .check(&suite)
        .await
        .expect("the real agent still answers");
    assert_eq!(outcomes[0].status, rnr_agent_proto::check::Status::Passed);
}

/// The first frame of a session link: its hello.
async fn session_hello(link: &mut crate::agent::SessionLink) -> rnr_agent_proto::session::Hello {
    use futures::StreamExt;
    use rnr_agent_proto::session::FromDaemon;
    let mut got = Vec::new();
    loop {
        if let Some((tag, p, _)) = rnr_agent_proto::frame::split(&got, 1 << 22).expect("a frame") {
            match FromDaemon::parse(tag, p) {
                Ok(FromDaemon::Hello(h)) => return h,
                other => panic!("the first frame is no hello: {other:?}"),
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), link.output.next()).await {
            Ok(Some(Ok(b))) => got.extend_from_slice(&b),
            other => panic!("no hello: {other:?}"),
        }
    }
}

/// The learner kills a terminal's session daemon and listens on its socket name with a
/// daemon of their own (which could hand the host a blocking pty or garbage): the host's
/// next attach reaches a fresh daemon that init started, never the impostor.
pub async fn session_impostor_reaches_nobody(h: Harness) {
    let (id, _g, dog) = setup(&h, "impostor").await;
    let attach = || async {
        h.driver
            .agent(&id)
            .await
            .expect("agent channel")
            .session("t-imp", 24, 80)
            .await
            .expect("attach")
    };
    let mut first = attach().await;
    let before = session_hello(&mut first).await;
    drop(first);
    let out = attack(
        &h,
        &id,
        "for p in /proc/[0-9]*; do \
           set -- $(tr '\\0' ' ' < $p/cmdline 2>/dev/null); \
           if [ \"$2\" = session-daemon ] && [ \"$3\" = t-imp ]; then d=${p#/proc/}; n=$6; fi; \
         done; \
         [ -n \"$n\" ] || { echo no-daemon; exit 1; }; \
         kill -9 $d; sleep 0.2; \
         /.rnr/rnr-agent session-daemon t-imp 24 80 $n & i=$!; \
         for _ in $(seq 50); do grep -q \"@$n\" /proc/net/unix && break; sleep 0.1; done; \
         grep -q \"@$n\" /proc/net/unix && echo \"impostor $i\"",
        Duration::from_secs(20),
    )
    .await;
    let said = text(&out.stdout);
    let impostor: u32 = said
        .split_whitespace()
        .skip_while(|w| *w != "impostor")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the impostor did not take the name: {out:?}"));
    let mut second = attach().await;
    let after = session_hello(&mut second).await;
    assert_ne!(
        after.shell_pid, before.shell_pid,
        "the killed session's shell is gone"
    );
    let parent = attack(
        &h,
        &id,
        &format!("cut -d' ' -f4 /proc/{}/stat", after.shell_pid),
        Duration::from_secs(10),
    )
    .await;
    let daemon: u32 = text(&parent.stdout)
        .trim()
        .parse()
        .expect("the shell's parent");
    assert_ne!(daemon, impostor, "the host was connected to the impostor");
    let grandparent = attack(
        &h,
        &id,
        &format!("cut -d' ' -f4 /proc/{daemon}/stat"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        text(&grandparent.stdout).trim(),
        "1",
        "the session's daemon is init's child"
    );
    drop(second);
    let probes = dog.finish("session impostor").await;
    probes.assert_prompt();
}

/// Every attack of the suite; a driver's instantiation must name each exactly once.
pub const ALL: &[&str] = &[
    "fork_bomb",
    "memory_hog",
    "disk_fill",
    "cpu_spin",
    "other_machines_unreachable",
    "host_services_unreachable",
    "mounting_refused",
    "kernel_module_refused",
    "proc_sys_and_sys_read_only",
    "reboot_refused",
    "no_escape_through_proc_or_devices",
    "agent_cannot_be_replaced",
    "session_impostor_reaches_nobody",
    "syscalls_refused_on_every_entry_point",
    "core_dumps_off",
    "pty_quota",
    "hostile_account_files",
    "ipv6_host_listener_unreachable",
    "router_advertisement_ignored",
    "raw_sockets_refused",
    "spoofed_sources_dropped",
    "arp_spoofing_without_effect",
    "metadata_unreachable",
    "private_ranges_and_smtp_unreachable",
    "outbound_rate_limited",
];

/// Asserts that a driver's instantiation names every attack exactly once.
pub fn assert_complete(named: &[&str]) {
    let mut named = named.to_vec();
    let mut all = ALL.to_vec();
    named.sort_unstable();
    all.sort_unstable();
    assert_eq!(named, all, "the isolation suite is instantiated in full");
}

/// Instantiates the isolation suite for a driver: `$setup` is a path to an
/// `async fn() -> Harness`. Every attack the driver contains is listed; `not_contained`
/// ones (with the reason) are generated as `#[ignore]`d tests, so they show in every test
/// report instead of vanishing. A generated `isolation_suite_is_complete` test fails if an
/// attack is missing from both lists.
#[macro_export]
macro_rules! isolation_tests {
    ($setup:path) => {
        $crate::isolation_tests!($setup; contained: [
            fork_bomb,
            memory_hog,
            disk_fill,
            cpu_spin,
            other_machines_unreachable,
            host_services_unreachable,
            mounting_refused,
            kernel_module_refused,
            proc_sys_and_sys_read_only,
            reboot_refused,
            no_escape_through_proc_or_devices,
            agent_cannot_be_replaced,
            session_impostor_reaches_nobody,
            syscalls_refused_on_every_entry_point,
            core_dumps_off,
            pty_quota,
            hostile_account_files,
            ipv6_host_listener_unreachable,
            router_advertisement_ignored,
            raw_sockets_refused,
            spoofed_sources_dropped,
            arp_spoofing_without_effect,
            metadata_unreachable,
            private_ranges_and_smtp_unreachable,
            outbound_rate_limited
        ]; not_contained: []);
    };
    ($setup:path; contained: [$($name:ident),* $(,)?];
     not_contained: [$($skip:ident = $why:literal),* $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::isolation::$name($setup().await).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = $why]
            async fn $skip() {
                $crate::isolation::$skip($setup().await).await;
            }
        )*
        #[test]
        fn isolation_suite_is_complete() {
            $crate::isolation::assert_complete(&[
                $(stringify!($name),)* $(stringify!($skip),)*
            ]);
        }
    };
}

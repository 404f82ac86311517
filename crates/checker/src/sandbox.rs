//! The sandbox a pytest check runs in. A check's Python runs on the host, but what it does
//! is steered by a machine whose root is the (hostile) learner: a web page that redirects
//! to the host's loopback or a cloud's metadata service, output crafted for a careless
//! parser, a body that never ends. So pytest gets nothing of the host it does not need:
//!
//! * its own unprivileged uid and gid (`uid_base` + the run's slot, no supplementary
//!   groups, no new privileges), a seccomp filter against namespaces of its own and the
//!   kernel's rarer doors (`seccomp_filter`), no descriptor of rnr's but stdio, and a
//!   clean environment (no `RNR_*`, no secrets);
//! * its own cgroup (memory and pids capped; cgroup v1 or v2 under the `cgroup_root`
//!   passed in), killed whole when the check ends or times out;
//! * its own mount namespace whose root is an empty, read-only tmpfs holding only `/usr`,
//!   `/etc` (less the paths in `hide`), the merged-/usr links, a few device nodes, its own
//!   `/proc` (other users' processes invisible), a private `/tmp` (its `HOME`), the run's
//!   files at `/rnr` and the exercise at `/exercise`, all read-only but `/tmp`;
//! * its own network namespace holding loopback and, when the machine has an IPv4 address,
//!   one veth whose only route is to that address. The host end is up without IPv6, its
//!   neighbours are fixed (no ARP), and iptables rules of the run let through only the
//!   sandbox's connections to the machine (masqueraded as the host, so the machine sees
//!   what it saw before) and their replies; anything else the veth brings (broadcasts,
//!   multicast, the host's own addresses) is dropped in INPUT. The host's loopback, other
//!   machines, the metadata service and the host's services are unreachable.
//!
//! A slot is claimed by creating the host end of its veth, whose name (`rnrc<slot>`) the
//! kernel keeps unique on the host, so several rnr processes on one host never share one.
//! Exec in the machine goes through the platform, over the Unix socket rnr serves in the
//! run's folder: the sandbox never holds a driver's socket or an agent's channel.

use crate::{CheckerError, Result};
use std::ffi::CString;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How pytest checks are confined.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Off, pytest runs as rnr's own user with a clean environment but nothing else: only
    /// for a trusted development host where rnr is not root.
    pub enabled: bool,
    pub cgroup_root: PathBuf,
    pub proc_root: PathBuf,
    /// First uid (and gid) of the sandboxes; a run's is this plus its slot.
    pub uid_base: u32,
    /// Addresses the sandboxes' ends of their veths take (never seen outside the host).
    pub subnet: ipnet::Ipv4Net,
    pub memory_mib: u64,
    pub pids: u64,
    /// Host paths under the sandbox's `/etc` or `/usr` it must not see (rnr's own config).
    pub hide: Vec<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cgroup_root: "/sys/fs/cgroup".into(),
            proc_root: "/proc".into(),
            uid_base: 900_000_000,
            subnet: ipnet::Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 16)
                .unwrap_or_else(|_| unreachable!("a valid prefix")),
            memory_mib: 512,
            pids: 128,
            hide: vec!["/etc/rnr".into()],
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CheckerError {
    let what = what.into();
    move |source| CheckerError::Sandbox { what, source }
}

fn other(what: impl Into<String>, message: impl Into<String>) -> CheckerError {
    CheckerError::Sandbox {
        what: what.into(),
        source: std::io::Error::other(message.into()),
    }
}

fn cstr(p: impl AsRef<std::ffi::OsStr>) -> CString {
    // Paths of the host and of our own making hold no NUL.
    CString::new(p.as_ref().as_bytes()).unwrap_or_default()
}

/// Runs `program` with `script` on stdin (an `ip -batch`, an `iptables-restore`).
fn run_script(program: &str, args: &[&str], script: &str) -> Result<()> {
    let what = format!("{program} {}", args.join(" "));
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(what.clone()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(io(what.clone()))?;
    }
    let out = child.wait_with_output().map_err(io(what.clone()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(other(
        what,
        format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    ))
}

/// The network of one run: the host end of the veth and the iptables rules.
#[derive(Debug)]
struct Wiring {
    host_if: String,
    rules: Option<(String, String)>,
}

impl Wiring {
    /// The run's rules, to add (`-I`) or delete (`-D`): the sandbox to its machine and
    /// the replies pass; everything else it sends is dropped.
    fn rules(host_if: &str, sandbox: Ipv4Addr, machine: Ipv4Addr) -> (String, String) {
        let filter = [
            format!("FORWARD -o {host_if} -j DROP"),
            format!("FORWARD -i {host_if} -j DROP"),
            format!(
                "FORWARD -o {host_if} -s {machine}/32 -d {sandbox}/32 -m conntrack \
                 --ctstate ESTABLISHED,RELATED -j ACCEPT"
            ),
            format!("FORWARD -i {host_if} -s {sandbox}/32 -d {machine}/32 -j ACCEPT"),
            format!("INPUT -i {host_if} -j DROP"),
        ];
        let nat = format!("POSTROUTING -s {sandbox}/32 -d {machine}/32 -j MASQUERADE");
        let script = |op: &str| {
            let first = if op == "-I" { " 1" } else { "" };
            let mut s = String::from("*filter\n");
            for r in &filter {
                let (chain, rest) = r.split_once(' ').unwrap_or((r, ""));
                s.push_str(&format!("{op} {chain}{first} {rest}\n"));
            }
            s.push_str("COMMIT\n*nat\n");
            let (chain, rest) = nat.split_once(' ').unwrap_or((&nat, ""));
            s.push_str(&format!("{op} {chain}{first} {rest}\nCOMMIT\n"));
            s
        };
        (script("-I"), script("-D"))
    }
}

impl Drop for Wiring {
    fn drop(&mut self) {
        if let Some((_, delete)) = &self.rules {
            if let Err(e) = run_script("iptables-restore", &["-w", "--noflush"], delete) {
                tracing::warn!(veth = %self.host_if, error = %e, "cannot delete a check sandbox's rules");
            }
        }
        // Deleting one end deletes the pair; the sandbox's namespace may be gone already.
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes the rules of sandboxes whose veth is gone: left by an rnr killed mid-check
/// (rnr's own and other instances' on the host alike; a live run's veth exists before
/// its rules). Returns how many were deleted.
pub fn sweep(cfg: &SandboxConfig) -> Result<usize> {
    // The host's interfaces (rnr's namespace: the process's, not a thread's).
    let dev = cfg.proc_root.join("net/dev");
    let dev = std::fs::read_to_string(&dev).map_err(io(format!("reading {}", dev.display())))?;
    let links: std::collections::HashSet<&str> = dev
        .lines()
        .filter_map(|l| Some(l.split_once(':')?.0.trim()))
        .collect();
    let gone = |name: &str| !links.contains(name);
    let net = cfg.subnet;
    let mut script = String::new();
    let mut n = 0;
    for table in ["filter", "nat"] {
        let out = std::process::Command::new("iptables-save")
            .args(["-t", table])
            .output()
            .map_err(io("iptables-save"))?;
        let mut lines = String::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(rule) = line.strip_prefix("-A ") else {
                continue;
            };
            let words: Vec<&str> = rule.split_whitespace().collect();
            let arg = |flag: &str| {
                words
                    .windows(2)
                    .find(|w| w[0] == flag)
                    .map(|w| w[1].to_string())
            };
            // Filter rules name the veth; the NAT rule, the sandbox's address (its slot).
            let veth = arg("-i")
                .or_else(|| arg("-o"))
                .filter(|i| i.starts_with("rnrc"));
            let by_address = || {
                let src: ipnet::Ipv4Net = arg("-s")?.parse().ok()?;
                let slot = u32::from(src.addr()).checked_sub(u32::from(net.network()))?;
                (table == "nat" && net.contains(&src.addr()) && rule.contains("MASQUERADE"))
                    .then(|| format!("rnrc{slot:x}"))
            };
            if let Some(name) = veth.or_else(by_address) {
                if gone(&name) {
                    lines.push_str(&format!("-D {rule}\n"));
                    n += 1;
                }
            }
        }
        if !lines.is_empty() {
            script.push_str(&format!("*{table}\n{lines}COMMIT\n"));
        }
    }
    if !script.is_empty() {
        run_script("iptables-restore", &["-w", "--noflush"], &script)?;
    }
    Ok(n)
}

/// One run's sandbox: its slot, namespaces, cgroup and rules, removed when dropped.
#[derive(Debug)]
pub struct Sandbox {
    name: String,
    uid: u32,
    netns: OwnedFd,
    cgroups: Vec<PathBuf>,
    v2: bool,
    memory_bytes: u64,
    // Dropped after the cgroups are emptied (field order).
    _wiring: Option<Wiring>,
}

/// A locally administered MAC address for `slot`'s end `end`.
fn mac(end: u8, slot: u32) -> String {
    let b = slot.to_be_bytes();
    format!("02:72:{end:02x}:{:02x}:{:02x}:{:02x}", b[1], b[2], b[3])
}

/// A fresh network namespace with loopback up and IPv6 off, made on a thread of its own
/// (the only one to enter it) and kept by the returned descriptor.
fn new_netns(proc_root: &Path) -> Result<OwnedFd> {
    let proc_root = proc_root.to_path_buf();
    std::thread::spawn(move || -> Result<OwnedFd> {
        // SAFETY: unshare(2) with CLONE_NEWNET moves only this thread, which exits after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io("a network namespace (unshare)")(
                std::io::Error::last_os_error(),
            ));
        }
        // /proc/sys/net is the calling thread's namespace's.
        let v6 = proc_root.join("sys/net/ipv6/conf");
        if v6.exists() {
            for conf in ["all", "default"] {
                let p = v6.join(conf).join("disable_ipv6");
                std::fs::write(&p, "1").map_err(io(format!("writing {}", p.display())))?;
            }
        }
        let ns = proc_root.join("thread-self/ns/net");
        let fd = std::fs::File::open(&ns).map_err(io(format!("opening {}", ns.display())))?;
        // Children inherit this thread's namespace.
        run_script("ip", &["-batch", "-"], "link set lo up\n")?;
        Ok(fd.into())
    })
    .join()
    .map_err(|_| other("a network namespace", "the thread making it panicked"))?
}

impl Sandbox {
    /// Claims a slot and sets up its network (to `machine`, if it has an IPv4 address)
    /// and cgroup. Blocking: call it from a blocking thread.
    pub fn create(cfg: &SandboxConfig, machine: Option<Ipv4Addr>) -> Result<Self> {
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(other(
                "pytest checks",
                "their sandbox needs rnr to run as root ([checker] pytest_sandbox = false \
                 runs them unconfined, as rnr's own user: trusted hosts only)",
            ));
        }
        let size = u32::try_from(1u64 << (32 - u32::from(cfg.subnet.prefix_len().max(1))))
            .unwrap_or(u32::MAX);
        let mut last = None;
        for _ in 0..16 {
            let mut b = [0u8; 4];
            getrandom::getrandom(&mut b).map_err(|e| other("a random slot", e.to_string()))?;
            let slot = 1 + u32::from_ne_bytes(b) % size.saturating_sub(2).max(1);
            match Self::with_slot(cfg, machine, slot) {
                Err(CheckerError::Sandbox { source, .. })
                    if source.to_string().contains("File exists") =>
                {
                    last = Some(source);
                }
                other => return other,
            }
        }
        Err(io("a free slot")(last.unwrap_or_else(|| {
            std::io::Error::other("every slot tried is taken")
        })))
    }

    fn with_slot(cfg: &SandboxConfig, machine: Option<Ipv4Addr>, slot: u32) -> Result<Self> {
        let name = format!("rnrc{slot:x}");
        let netns = new_netns(&cfg.proc_root)?;
        let wiring = match machine {
            None => None,
            Some(m) => Some(Self::wire(cfg, &netns, &name, slot, m)?),
        };
        let mut sb = Self {
            name,
            uid: cfg.uid_base.saturating_add(slot),
            netns,
            cgroups: Vec::new(),
            v2: false,
            memory_bytes: cfg.memory_mib.saturating_mul(1 << 20),
            _wiring: wiring,
        };
        sb.make_cgroups(cfg)?;
        Ok(sb)
    }

    fn wire(
        cfg: &SandboxConfig,
        netns: &OwnedFd,
        name: &str,
        slot: u32,
        machine: Ipv4Addr,
    ) -> Result<Wiring> {
        let sandbox = Ipv4Addr::from(u32::from(cfg.subnet.network()) + slot);
        let (mac_s, mac_h) = (mac(1, slot), mac(2, slot));
        // Made from inside the namespace, its peer in ours: the peer's name is the claim.
        let host_ns = cfg.proc_root.join("thread-self/ns/net");
        let host_ns =
            std::fs::File::open(&host_ns).map_err(io(format!("opening {}", host_ns.display())))?;
        let host_ns_path =
            cfg.proc_root
                .join(format!("{}/fd/{}", std::process::id(), host_ns.as_raw_fd()));
        let inside = format!(
            "link add eth0 address {mac_s} type veth peer name {name} address {mac_h} netns {}\n\
             link set eth0 up\n\
             addr add {sandbox}/32 dev eth0\n\
             route add {machine}/32 dev eth0 src {sandbox}\n\
             neigh replace {machine} lladdr {mac_h} dev eth0 nud permanent\n",
            host_ns_path.display()
        );
        in_netns(netns, || run_script("ip", &["-batch", "-"], &inside))?;
        drop(host_ns);
        let mut wiring = Wiring {
            host_if: name.to_string(),
            rules: None,
        };
        let v6 = cfg.proc_root.join("sys/net/ipv6/conf").join(name);
        if v6.exists() {
            let p = v6.join("disable_ipv6");
            std::fs::write(&p, "1").map_err(io(format!("writing {}", p.display())))?;
        }
        run_script(
            "ip",
            &["-batch", "-"],
            &format!(
                "link set {name} up\n\
                 route add {sandbox}/32 dev {name}\n\
                 neigh replace {sandbox} lladdr {mac_s} dev {name} nud permanent\n"
            ),
        )?;
        let (add, delete) = Wiring::rules(name, sandbox, machine);
        run_script("iptables-restore", &["-w", "--noflush"], &add)?;
        wiring.rules = Some((add, delete));
        Ok(wiring)
    }

    fn make_cgroups(&mut self, cfg: &SandboxConfig) -> Result<()> {
        let root = &cfg.cgroup_root;
        let write = |p: PathBuf, v: String| {
            std::fs::write(&p, v).map_err(io(format!("writing {}", p.display())))
        };
        let mkdir = |p: &Path| -> Result<()> {
            // A leaf left by a crash of an earlier holder of the slot: empty, removable.
            let _ = std::fs::remove_dir(p);
            std::fs::create_dir_all(p).map_err(io(format!("creating {}", p.display())))
        };
        let mem = self.memory_bytes.to_string();
        let pids = cfg.pids.to_string();
        if root.join("cgroup.controllers").exists() {
            self.v2 = true;
            let parent = root.join("rnr-checks");
            std::fs::create_dir_all(&parent)
                .map_err(io(format!("creating {}", parent.display())))?;
            for dir in [root.as_path(), parent.as_path()] {
                write(dir.join("cgroup.subtree_control"), "+memory +pids".into())?;
            }
            let leaf = parent.join(&self.name);
            mkdir(&leaf)?;
            self.cgroups.push(leaf.clone());
            write(leaf.join("memory.max"), mem)?;
            if leaf.join("memory.swap.max").exists() {
                write(leaf.join("memory.swap.max"), "0".into())?;
            }
            write(leaf.join("pids.max"), pids)?;
            return Ok(());
        }
        for controller in ["pids", "memory"] {
            let base = root.join(controller);
            if !base.is_dir() {
                return Err(other(
                    format!("cgroup controller {}", base.display()),
                    "not mounted (neither cgroup v2 nor a v1 hierarchy of it)",
                ));
            }
            let leaf = base.join("rnr-checks").join(&self.name);
            mkdir(&leaf)?;
            self.cgroups.push(leaf.clone());
            if controller == "pids" {
                write(leaf.join("pids.max"), pids.clone())?;
            } else {
                write(leaf.join("memory.limit_in_bytes"), mem.clone())?;
                if leaf.join("memory.memsw.limit_in_bytes").exists() {
                    write(leaf.join("memory.memsw.limit_in_bytes"), mem.clone())?;
                }
            }
        }
        Ok(())
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Processes in the run's cgroup.
    fn procs(&self) -> Vec<i32> {
        let Some(leaf) = self.cgroups.first() else {
            return Vec::new();
        };
        std::fs::read_to_string(leaf.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kills every process of the run (what pytest left behind, or all of it on a
    /// timeout) and waits until none is left.
    pub fn kill_all(&self) {
        if self.v2 {
            if let Some(leaf) = self.cgroups.first() {
                let _ = std::fs::write(leaf.join("cgroup.kill"), "1");
            }
        }
        for _ in 0..400 {
            let procs = self.procs();
            if procs.is_empty() {
                return;
            }
            for pid in procs {
                // SAFETY: kill(2) on a pid read from the run's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::warn!(sandbox = %self.name, "processes of a check sandbox survive SIGKILL");
    }

    /// What the child does between fork and exec (see [`Plan`]).
    pub fn plan(&self, layout: &Layout) -> Plan {
        let procs = self
            .cgroups
            .iter()
            .map(|c| cstr(c.join("cgroup.procs")))
            .collect();
        Plan {
            procs,
            netns: self.netns.as_raw_fd(),
            root: cstr(&layout.root),
            steps: layout.steps(),
            uid: self.uid,
            workdir: cstr("/tmp"),
            filter: seccomp_filter(),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill_all();
        for leaf in &self.cgroups {
            for _ in 0..100 {
                match std::fs::remove_dir(leaf) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    _ => break,
                }
            }
        }
    }
}

/// Runs `f` on a thread that entered `netns` (its children are born there).
fn in_netns<T: Send>(netns: &OwnedFd, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let fd = netns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns(2) on a namespace descriptor we hold, for this thread alone,
            // which ends with the scope.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(io("entering the sandbox's network namespace")(
                    std::io::Error::last_os_error(),
                ));
            }
            f()
        })
        .join()
        .map_err(|_| other("the sandbox's network", "the thread wiring it panicked"))?
    })
}

/// What the sandbox's filesystem is made of.
#[derive(Debug, Clone)]
pub struct Layout {
    /// An empty host folder the sandbox's root tmpfs is mounted on (in its own namespace).
    pub root: PathBuf,
    /// The run's files (plugin, bridge socket), seen read-only at `/rnr`.
    pub run_dir: PathBuf,
    /// The exercise, seen read-only at `/exercise`.
    pub exercise_dir: PathBuf,
    /// The Python to run; its prefix is mounted too when it is not under `/usr`.
    pub python: PathBuf,
    pub hide: Vec<PathBuf>,
}

/// One step of building the sandbox's root; paths are the host's, under the new root.
#[derive(Debug)]
enum Step {
    Dir(CString),
    File(CString),
    Link {
        target: CString,
        path: CString,
    },
    Bind {
        src: CString,
        dst: CString,
        flags: libc::c_ulong,
    },
    Tmpfs {
        dst: CString,
        data: CString,
    },
    Proc(CString),
}

impl Layout {
    fn steps(&self) -> Vec<Step> {
        let under = |p: &Path| self.root.join(p.strip_prefix("/").unwrap_or(p));
        let ro = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        let mut steps = Vec::new();
        let bind_dir = |steps: &mut Vec<Step>, src: &Path, dst: &Path, flags| {
            // Every folder on the way, then the mount point.
            let mut at = PathBuf::from("/");
            for c in dst.strip_prefix("/").unwrap_or(dst).components() {
                at.push(c);
                steps.push(Step::Dir(cstr(under(&at))));
            }
            steps.push(Step::Bind {
                src: cstr(src),
                dst: cstr(under(dst)),
                flags,
            });
        };
        bind_dir(&mut steps, Path::new("/usr"), Path::new("/usr"), ro);
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            match std::fs::read_link(&host) {
                Ok(target) => steps.push(Step::Link {
                    target: cstr(target),
                    path: cstr(under(&host)),
                }),
                Err(_) if host.is_dir() => bind_dir(&mut steps, &host, &host, ro),
                Err(_) => {}
            }
        }
        bind_dir(&mut steps, Path::new("/etc"), Path::new("/etc"), ro);
        let dev = Path::new("/dev");
        steps.push(Step::Dir(cstr(under(dev))));
        steps.push(Step::Tmpfs {
            dst: cstr(under(dev)),
            data: cstr("mode=0755,size=64k"),
        });
        for node in ["null", "zero", "full", "random", "urandom"] {
            let p = dev.join(node);
            steps.push(Step::File(cstr(under(&p))));
            steps.push(Step::Bind {
                src: cstr(&p),
                dst: cstr(under(&p)),
                flags: libc::MS_NOSUID | libc::MS_NOEXEC,
            });
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            steps.push(Step::Link {
                target: cstr(target),
                path: cstr(under(&dev.join(link))),
            });
        }
        // Only what lies under a folder the sandbox sees needs hiding.
        let seen = |p: &Path| p.starts_with("/etc") || p.starts_with("/usr");
        for hidden in self.hide.iter().filter(|p| seen(p)) {
            if hidden.is_dir() {
                steps.push(Step::Tmpfs {
                    dst: cstr(under(hidden)),
                    data: cstr("mode=0755,size=4k"),
                });
            } else if hidden.exists() {
                steps.push(Step::Bind {
                    src: cstr("/dev/null"),
                    dst: cstr(under(hidden)),
                    flags: ro,
                });
            }
        }
        let proc = Path::new("/proc");
        steps.push(Step::Dir(cstr(under(proc))));
        steps.push(Step::Proc(cstr(under(proc))));
        let tmp = Path::new("/tmp");
        steps.push(Step::Dir(cstr(under(tmp))));
        steps.push(Step::Tmpfs {
            dst: cstr(under(tmp)),
            data: cstr("mode=1777,size=64m"),
        });
        let ro_noexec = ro | libc::MS_NOEXEC;
        bind_dir(&mut steps, &self.run_dir, Path::new("/rnr"), ro_noexec);
        bind_dir(
            &mut steps,
            &self.exercise_dir,
            Path::new("/exercise"),
            ro_noexec,
        );
        // A Python of its own (a virtualenv, /opt/…): its prefix, at the same place.
        let python = self.python.canonicalize().unwrap_or(self.python.clone());
        if !python.starts_with("/usr") {
            if let Some(prefix) = python.parent().and_then(Path::parent) {
                if prefix != Path::new("/") {
                    bind_dir(&mut steps, prefix, prefix, ro);
                }
            }
        }
        steps
    }
}

/// Where a seccomp filter's jump goes.
#[derive(Clone, Copy)]
enum To {
    Next,
    Allow,
    Deny,
    NoSys,
}

/// The sandbox's seccomp filter. An unprivileged process may still make namespaces of its
/// own (a user namespace gives it capabilities there) and reach the parts of the kernel
/// they open, new mount APIs, io_uring, BPF, keyrings: none of which a check needs, so
/// they fail with EPERM. `clone3` fails with ENOSYS (its flags are out of a filter's
/// reach; the C library falls back to `clone`, whose namespace flags are refused).
fn seccomp_filter() -> Vec<libc::sock_filter> {
    const LD_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const JSET: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    const ALLOW: u32 = 0x7fff_0000;
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7;
    let namespaces = (libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP) as u32;
    let denied = [
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
    ];
    // (code, k, jump if true, jump if false)
    let mut prog: Vec<(u16, u32, To, To)> = vec![(LD_ABS, 4, To::Next, To::Next)];
    prog.push((JEQ, ARCH, To::Next, To::Deny));
    prog.push((LD_ABS, 0, To::Next, To::Next));
    // The x32 ABI's numbers (x86_64 with bit 30 set) are no way around the list.
    #[cfg(target_arch = "x86_64")]
    prog.push((JGE, 0x4000_0000, To::Deny, To::Next));
    for nr in denied {
        prog.push((JEQ, nr as u32, To::Deny, To::Next));
    }
    prog.push((JEQ, libc::SYS_clone3 as u32, To::NoSys, To::Next));
    prog.push((JEQ, libc::SYS_clone as u32, To::Next, To::Allow));
    // clone's flags are its first argument (the low half, at offset 16).
    prog.push((LD_ABS, 16, To::Next, To::Next));
    prog.push((JSET, namespaces, To::Deny, To::Allow));
    let n = prog.len();
    // After the program: allow, deny, no such call.
    let (allow, deny, nosys) = (n, n + 1, n + 2);
    let mut out: Vec<libc::sock_filter> = prog
        .iter()
        .enumerate()
        .map(|(i, &(code, k, t, f))| {
            let off = |to: To| -> u8 {
                let target = match to {
                    To::Next => i + 1,
                    To::Allow => allow,
                    To::Deny => deny,
                    To::NoSys => nosys,
                };
                u8::try_from(target - i - 1).unwrap_or(0)
            };
            let jumps = code & 0x07 == 0x05;
            libc::sock_filter {
                code,
                jt: if jumps { off(t) } else { 0 },
                jf: if jumps { off(f) } else { 0 },
                k,
            }
        })
        .collect();
    for k in [
        ALLOW,
        libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
    ] {
        out.push(libc::sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k,
        });
    }
    out
}

/// Everything the child needs between fork and exec, made beforehand: that code must not
/// allocate (the parent has other threads), only make system calls.
#[derive(Debug)]
pub struct Plan {
    procs: Vec<CString>,
    netns: RawFd,
    root: CString,
    steps: Vec<Step>,
    uid: u32,
    workdir: CString,
    filter: Vec<libc::sock_filter>,
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Plan {
    /// Enters the sandbox: cgroup, network, mounts, then the unprivileged uid.
    ///
    /// # Safety
    /// Only in a child between fork and exec (`Command::pre_exec`): it changes the
    /// process's namespaces, root and credentials.
    pub unsafe fn enter(&self) -> std::io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: system calls only, on C strings and descriptors this plan owns, in the
        // forked child alone (the caller's contract).
        unsafe {
            for procs in &self.procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                check(fd)?;
                let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if r != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            check(libc::setns(self.netns, libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC))?;
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0755,size=1m".as_ptr().cast(),
            ))?;
            for step in &self.steps {
                match step {
                    Step::Dir(p) => {
                        if libc::mkdir(p.as_ptr(), 0o755) != 0 {
                            let e = std::io::Error::last_os_error();
                            if e.raw_os_error() != Some(libc::EEXIST) {
                                return Err(e);
                            }
                        }
                    }
                    Step::File(p) => {
                        let fd = libc::open(
                            p.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        );
                        check(fd)?;
                        libc::close(fd);
                    }
                    Step::Link { target, path } => {
                        check(libc::symlink(target.as_ptr(), path.as_ptr()))?;
                    }
                    Step::Bind { src, dst, flags } => {
                        check(libc::mount(
                            src.as_ptr(),
                            dst.as_ptr(),
                            null,
                            libc::MS_BIND | libc::MS_REC,
                            std::ptr::null(),
                        ))?;
                        check(libc::mount(
                            null,
                            dst.as_ptr(),
                            null,
                            libc::MS_BIND | libc::MS_REMOUNT | flags,
                            std::ptr::null(),
                        ))?;
                    }
                    Step::Tmpfs { dst, data } => {
                        check(libc::mount(
                            c"tmpfs".as_ptr(),
                            dst.as_ptr(),
                            c"tmpfs".as_ptr(),
                            libc::MS_NOSUID | libc::MS_NODEV,
                            data.as_ptr().cast(),
                        ))?;
                    }
                    Step::Proc(dst) => {
                        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                        let mount = |data: &std::ffi::CStr| {
                            libc::mount(
                                c"proc".as_ptr(),
                                dst.as_ptr(),
                                c"proc".as_ptr(),
                                flags,
                                data.as_ptr().cast(),
                            )
                        };
                        // Kernels before 5.8 know only the numeric form.
                        if mount(c"hidepid=invisible,subset=pid") != 0 {
                            check(mount(c"hidepid=2"))?;
                        }
                    }
                }
            }
            // The new root replaces the old, which is then let go of entirely.
            check(libc::chdir(self.root.as_ptr()))?;
            check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as i32)?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(c"/".as_ptr()))?;
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                std::ptr::null(),
            ))?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(self.uid, self.uid, self.uid))?;
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            if libc::getuid() != self.uid || libc::geteuid() != self.uid || self.uid == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            let core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            check(libc::setrlimit(libc::RLIMIT_CORE, &core))?;
            check(libc::chdir(self.workdir.as_ptr()))?;
            // Nothing of rnr's but stdio crosses exec, whoever forgot O_CLOEXEC (a
            // library's socket, a database file). Kernels before 5.11: one by one.
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                for fd in 3..65_536 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            // Last: from here on the calls above are refused.
            let prog = libc::sock_fprog {
                len: self.filter.len() as libc::c_ushort,
                filter: self.filter.as_ptr().cast_mut(),
            };
            check(libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ))?;
        }
        Ok(())
    }
}

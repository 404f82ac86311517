//! The OCI runtime config (config.json) of a machine, close to what Docker generates:
//! its namespaces, mounts, capabilities, network sysctls, masked and read-only paths,
//! resource limits and seccomp profile.

use rnr_driver::{Limits, AGENT_DIR, AGENT_PATH, MACHINE_LABEL, OWNER_LABEL};
use serde_json::{json, Value};
use std::path::Path;

/// PID 1: survives `kill -9 -1` from inside (no handler for it in a pid namespace's init)
/// and reaps orphans through `wait`.
pub const INIT_SCRIPT: &str = "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done";

/// crun's annotation carrying a precompiled seccomp filter (base64 BPF), used instead of
/// compiling the profile at every start.
pub const SECCOMP_BPF_ANNOTATION: &str = "run.oci.seccomp_bpf_data";

/// PATH given to every process in a machine.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set without CAP_NET_RAW: raw and packet sockets would let
/// the learner forge frames (the bridge's pins drop them, but need not see them); pings
/// use ICMP datagram sockets instead (`net.ipv4.ping_group_range`, see [`config`]).
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The machine's seccomp profile: Docker's default allow-list for the capabilities
/// machines hold (see [`crate::seccomp`]).
pub fn seccomp() -> Value {
    crate::seccomp::profile(CAPABILITIES)
}

/// Ptys one machine may have open at once by default: its devpts instance's `max`, so that
/// a learner holding thousands cannot exhaust the host's `kernel.pty.max`, which every
/// other machine's terminals draw from.
pub const DEFAULT_MAX_PTYS: u32 = 256;

/// Inputs of [`config`].
#[derive(Debug)]
pub struct ConfigInput<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub hostname: &'a str,
    pub rootfs: &'a Path,
    pub limits: Limits,
    pub cgroups_path: &'a str,
    /// Whether the host can cap the machine's swap: cgroup v1 with memory.memsw.* (swap
    /// accounting), or cgroup v2 (memory.swap.max; crun skips it where swap is off).
    pub swap_limit: bool,
    /// Most ptys open at once in the machine (its devpts instance's `max`); 0: no quota.
    pub max_ptys: u32,
    /// RLIMIT_NOFILE of the machine's processes (at most the platform's own hard limit).
    pub nofile: u64,
    /// Host uid/gid that root in the machine maps to; `None` without a user namespace.
    pub uid_base: Option<u32>,
    /// The agent's staged directory ([`rnr_driver::stage_agent`]), bind-mounted read-only
    /// at [`rnr_driver::AGENT_DIR`].
    pub agent: Option<&'a Path>,
}

fn device_rule(kind: &str, major: Option<i64>, minor: Option<i64>, access: &str) -> Value {
    let mut v = json!({"allow": true, "type": kind, "access": access});
    if let Some(m) = major {
        v["major"] = json!(m);
    }
    if let Some(m) = minor {
        v["minor"] = json!(m);
    }
    v
}

/// The machine's config.json.
pub fn config(i: &ConfigInput<'_>) -> Value {
    let caps: Vec<&str> = CAPABILITIES.to_vec();
    // With an agent, it is PID 1 and serves execs on fd 3 (see `agent`).
    let init_args = match i.agent {
        Some(_) => json!([AGENT_PATH, "init"]),
        None => json!(["/bin/sh", "-c", INIT_SCRIPT]),
    };
    let memory = i.limits.memory_mib.saturating_mul(1 << 20);
    let mut memory_res = json!({"limit": memory});
    if i.swap_limit {
        // OCI "swap" is memory + swap: equal to the limit means no swap beyond the cap
        // (memory.memsw.limit_in_bytes = limit on v1; crun writes memory.swap.max = 0 on v2).
        memory_res["swap"] = json!(memory);
    }
    let period: u64 = 100_000;
    let quota = i.limits.cpu_millis.saturating_mul(period) / 1000;
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "mount"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "network"}),
    ];
    // In a user namespace the kernel refuses a ping group range beyond the machine's map.
    let max_gid = match i.uid_base {
        Some(_) => 65535,
        None => i32::MAX as u32,
    };
    let sysctl: serde_json::Map<String, Value> = rnr_driver::netguard::machine_sysctls(max_gid)
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let mut linux = json!({
        "sysctl": sysctl,
        "resources": {
            "memory": memory_res,
            "cpu": {"quota": quota, "period": period},
            "pids": {"limit": i.limits.pids},
            "devices": [
                {"allow": false, "access": "rwm"},
                device_rule("c", None, None, "m"),
                device_rule("b", None, None, "m"),
                device_rule("c", Some(1), Some(3), "rwm"),
                device_rule("c", Some(1), Some(5), "rwm"),
                device_rule("c", Some(1), Some(7), "rwm"),
                device_rule("c", Some(1), Some(8), "rwm"),
                device_rule("c", Some(1), Some(9), "rwm"),
                device_rule("c", Some(5), Some(0), "rwm"),
                device_rule("c", Some(5), Some(1), "rwm"),
                device_rule("c", Some(5), Some(2), "rwm"),
                device_rule("c", Some(136), None, "rwm"),
            ],
        },
        "cgroupsPath": i.cgroups_path,
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
        "seccomp": seccomp(),
    });
    if let Some(base) = i.uid_base {
        namespaces.push(json!({"type": "user"}));
        let map = json!([{"containerID": 0, "hostID": base, "size": 65536}]);
        linux["uidMappings"] = map.clone();
        linux["gidMappings"] = map;
    }
    linux["namespaces"] = json!(namespaces);
    // A devpts instance of its own, with the machine's pty quota (0: none).
    let mut pts_options = vec![
        "nosuid".to_string(),
        "noexec".into(),
        "newinstance".into(),
        "ptmxmode=0666".into(),
        "mode=0620".into(),
        "gid=5".into(),
    ];
    if i.max_ptys > 0 {
        pts_options.push(format!("max={}", i.max_ptys));
    }
    let mut mounts = json!([
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": pts_options},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]);
    if let (Some(agent), Some(list)) = (i.agent, mounts.as_array_mut()) {
        // Read-only and without setuid: the learner's root can run it, not replace it,
        // and a mount point cannot be renamed away to put another `/.rnr` in its place.
        list.push(
            json!({"destination": AGENT_DIR, "type": "bind", "source": agent,
                         "options": ["bind", "ro", "nosuid", "nodev"]}),
        );
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": init_args,
            "env": [DEFAULT_PATH, "TERM=xterm-256color", "HOME=/root"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "inheritable": [],
                "ambient": [],
            },
            // No core dumps: a crash must not write the memory of a learner's process
            // anywhere, nor fill the disk; hard 0, and without CAP_SYS_RESOURCE it stays 0.
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": i.nofile, "soft": i.nofile},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
            ],
            "noNewPrivileges": false,
            // The learner's processes must not make the host's OOM killer pick others.
            "oomScoreAdj": 500,
        },
        "root": {"path": i.rootfs, "readonly": false},
        "hostname": i.hostname,
        "mounts": mounts,
        "annotations": {
            OWNER_LABEL: i.owner,
            MACHINE_LABEL: i.id,
        },
        "linux": linux,
    })
}

/// The platform's own hard RLIMIT_NOFILE, capped at 1048576: a machine cannot be given
/// more than its runtime may set.
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_max.min(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(swap_limit: bool) -> ConfigInput<'static> {
        ConfigInput {
            id: "m1",
            owner: "o",
            hostname: "h",
            rootfs: Path::new("/r"),
            limits: Limits {
                memory_mib: 64,
                cpu_millis: 500,
                pids: 64,
            },
            cgroups_path: "rnr-o/m1",
            swap_limit,
            max_ptys: 77,
            nofile: 4096,
            uid_base: None,
            agent: None,
        }
    }

    #[test]
    fn swap_is_capped_at_the_memory_limit_where_the_host_can() {
        // Both a v1 host with memsw and a v2 host: OCI swap (memory + swap) = the limit,
        // which crun writes as memsw.limit_in_bytes = 64 MiB (v1) or swap.max = 0 (v2).
        let c = config(&input(true));
        assert_eq!(c["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(c["linux"]["resources"]["memory"]["swap"], 64 << 20);
        // v1 without swap accounting (swapaccount=0): no memsw file to write.
        let c = config(&input(false));
        assert!(c["linux"]["resources"]["memory"].get("swap").is_none());
    }

    #[test]
    fn no_core_dumps() {
        let c = config(&input(true));
        let core: Vec<&Value> = c["process"]["rlimits"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["type"] == "RLIMIT_CORE")
            .collect();
        assert_eq!(
            core,
            [&json!({"type": "RLIMIT_CORE", "hard": 0, "soft": 0})]
        );
    }

    #[test]
    fn devpts_has_the_pty_quota() {
        let c = config(&input(true));
        let pts = c["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/dev/pts")
            .expect("a /dev/pts mount");
        assert_eq!(pts["type"], "devpts");
        let opts = pts["options"].as_array().unwrap();
        assert!(opts.contains(&json!("max=77")), "{opts:?}");
        assert!(
            opts.contains(&json!("newinstance")),
            "its own instance: {opts:?}"
        );
        let mut unlimited = input(true);
        unlimited.max_ptys = 0;
        let text = config(&unlimited)["mounts"].to_string();
        assert!(!text.contains("max="), "0: no quota: {text}");
    }

    #[test]
    fn the_profile_is_the_allow_list() {
        let c = config(&input(true));
        assert_eq!(c["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(c["linux"]["seccomp"], seccomp());
    }
}

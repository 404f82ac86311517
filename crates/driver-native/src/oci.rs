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

/// System calls refused with EPERM outright, in the spirit of Docker's default profile
/// (which allows them only with capabilities machines never get): loading kernels and
/// modules, BPF, perf events, userfaultfd, the kernel keyring, mounting (also refused for
/// want of CAP_SYS_ADMIN), joining namespaces, swap, process accounting, quotas, the
/// kernel log, file handles (open_by_handle_at was the "shocker" escape), io_uring, raw
/// I/O ports, the clock, and obsolete calls. `reboot` stays allowed: in a pid namespace
/// without CAP_SYS_BOOT it fails, and at most ends the machine's own init.
pub const DENIED_SYSCALLS: &[&str] = &[
    "_sysctl",
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "sysfs",
    "umount",
    "umount2",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
];

/// Namespace flags of clone(2); unshare(2) also takes CLONE_NEWTIME (0x80), which for
/// clone is part of the exit signal.
const CLONE_NAMESPACES: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];
const CLONE_NEWTIME: u64 = 0x80;

/// personality(2) values Docker allows: PER_LINUX, PER_LINUX32, UNAME26 with either, and
/// 0xffffffff (the query).
const PERSONALITY_ALLOWED_BITS: u64 = 0x0002_0008;
const PERSONALITY_QUERY: u64 = 0xffff_ffff;

const EPERM: i64 = 1;
const ENOSYS: i64 = 38;

/// One rule refusing `name` with `errno` when `arg0 & mask == value`. Each rule has a
/// single condition: conditions within one rule are ANDed by the OCI spec but ORed by
/// runc and crun when they test the same argument, so rules that must OR are kept apart.
fn deny_masked(name: &str, mask: u64, value: u64) -> Value {
    json!({
        "names": [name],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": EPERM,
        "args": [{"index": 0, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}],
    })
}

/// The machine's seccomp profile: allow by default, refuse what [`DENIED_SYSCALLS`]
/// lists, creating namespaces through clone(2) or unshare(2), clone3(2) with ENOSYS (its
/// flags sit in memory a filter cannot read; libc then falls back to clone), and
/// personality(2) values other than Docker's.
pub fn seccomp() -> Value {
    let mut rules = vec![
        json!({"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}),
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}),
    ];
    for &flag in CLONE_NAMESPACES {
        rules.push(deny_masked("clone", flag, flag));
        rules.push(deny_masked("unshare", flag, flag));
    }
    rules.push(deny_masked("unshare", CLONE_NEWTIME, CLONE_NEWTIME));
    // personality: refuse every value with a bit outside PERSONALITY_ALLOWED_BITS except
    // the query, using single-condition rules only. A 32-bit value other than 0xffffffff
    // has a highest clear bit j: bits 31..j+1 set, bit j clear (one masked comparison
    // per j). When a disallowed bit is among 31..j+1 that alone condemns it (bit 31 is
    // disallowed, so this covers every j < 31); for j = 31 a disallowed bit b below
    // must be set: one rule per b. Values beyond 32 bits (truncated by the kernel) are
    // refused by a plain comparison.
    rules.push(json!({
        "names": ["personality"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": EPERM,
        "args": [{"index": 0, "value": PERSONALITY_QUERY, "op": "SCMP_CMP_GT"}],
    }));
    for j in 0..31u32 {
        let above = PERSONALITY_QUERY & !((2u64 << j) - 1);
        rules.push(deny_masked("personality", above | 1 << j, above));
    }
    for b in 0..31u32 {
        let bit = 1u64 << b;
        if bit & PERSONALITY_ALLOWED_BITS == 0 {
            rules.push(deny_masked("personality", 1 << 31 | bit, bit));
        }
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures(),
        "syscalls": rules,
    })
}

/// The host's system call ABIs (a process may use any of them).
fn architectures() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        &[]
    }
}

/// Inputs of [`config`].
#[derive(Debug)]
pub struct ConfigInput<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub hostname: &'a str,
    pub rootfs: &'a Path,
    pub limits: Limits,
    pub cgroups_path: &'a str,
    /// Whether the host's memory cgroup has memory.memsw.* (swap accounting).
    pub memsw: bool,
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
    if i.memsw {
        // OCI "swap" is memory + swap: equal to the limit means no swap beyond the cap.
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
    let mut mounts = json!([
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
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
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": i.nofile, "soft": i.nofile}],
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

    /// Whether the profile refuses personality(`v`), evaluating its rules as the runtime
    /// would (each rule one condition, rules ORed).
    fn personality_refused(profile: &Value, v: u64) -> bool {
        profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n == "personality")
            })
            .any(|r| {
                let arg = &r["args"][0];
                let a = arg["value"].as_u64().unwrap();
                match arg["op"].as_str().unwrap() {
                    "SCMP_CMP_GT" => v > a,
                    "SCMP_CMP_MASKED_EQ" => v & a == arg["valueTwo"].as_u64().unwrap(),
                    op => panic!("unexpected op {op}"),
                }
            })
    }

    #[test]
    fn personality_allows_only_dockers_values() {
        let p = seccomp();
        for v in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
            assert!(!personality_refused(&p, v), "{v:#x} allowed");
        }
        for v in [
            1,
            0x0004_0000, // ADDR_NO_RANDOMIZE
            0x0004_0008,
            0x0040_0000, // READ_IMPLIES_EXEC
            0x8000_0000,
            0xffff_fffe,
            0x7fff_ffff,
            0x1_0000_0000,
            0xffff_ffff_ffff_ffff,
        ] {
            assert!(personality_refused(&p, v), "{v:#x} refused");
        }
        for b in 0..32 {
            let v = 1u64 << b;
            assert_eq!(
                personality_refused(&p, v),
                v & PERSONALITY_ALLOWED_BITS == 0,
                "bit {b}"
            );
        }
    }

    #[test]
    fn every_rule_has_at_most_one_condition() {
        for r in seccomp()["syscalls"].as_array().unwrap() {
            assert!(r["args"].as_array().map_or(0, Vec::len) <= 1, "{r}");
        }
    }
}

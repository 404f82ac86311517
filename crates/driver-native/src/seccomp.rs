//! The machines' seccomp profile: an allow-list derived from Docker's default profile.
//!
//! Source: moby/profiles, `seccomp/default.json` at tag `seccomp/v0.2.3` (commit 3c28324,
//! 2026-05-06: kernel 6.13's calls, AF_ALG and AF_VSOCK sockets refused), the profile the
//! Docker Engine applies to every container unless told otherwise. What is taken from it:
//!
//! * its unconditional allow-list ([`DOCKER_ALLOWED`], verbatim: it names the 32-bit
//!   variants too, e.g. `chown32`, `socketcall`), minus [`STRICTER_THAN_DOCKER`];
//! * the rules it conditions on the host's architecture, for x86 (`arch_prctl`,
//!   `modify_ldt`) and arm;
//! * the rules it conditions on capabilities ([`BY_CAPABILITY`]), evaluated for the
//!   capabilities machines get ([`crate::oci::CAPABILITIES`]): of those only
//!   CAP_SYS_CHROOT unlocks anything (`chroot`). Without CAP_SYS_ADMIN: `clone` only
//!   without namespace flags, `clone3` refused with ENOSYS (its flags sit in memory a filter
//!   cannot read; libc then falls back to `clone`), no `unshare`, `setns`, mounting;
//! * `ptrace` and `process_vm_{readv,writev}` (its kernel ≥ 4.8 rule), `personality` with
//!   Docker's five values only, `socket` for every family but AF_ALG (38) and AF_VSOCK (40).
//!
//! Everything else is refused with EPERM, on each of the host's system call ABIs (x86-64,
//! i386 and x32 on x86-64). Names the runtime's libseccomp does not know (calls newer than
//! it) are skipped by crun and so stay refused, with EPERM where Docker's runc answers
//! ENOSYS for calls newer than its profile.

use serde_json::{json, Value};

const EPERM: i64 = 1;
const ENOSYS: i64 = 38;

/// Docker's unconditional allow-list (the first rule of `default.json`, in its order).
pub const DOCKER_ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "riscv_hwprobe",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Calls Docker allows that machines do not, as this driver's profile refused them before
/// it became an allow-list: `name_to_handle_at` is the half of the "shocker" escape that
/// needs no capability (file handles outlive paths), and `clock_adjtime` is a way into the
/// host's clock discipline nothing in an exercise needs.
pub const STRICTER_THAN_DOCKER: &[&str] =
    &["name_to_handle_at", "clock_adjtime", "clock_adjtime64"];

/// Docker's rules allowing calls only to containers with a capability.
pub const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Docker's rule for kernels ≥ 4.8 (whose seccomp runs after ptrace, so a tracer cannot
/// smuggle a call past it): debuggers and `strace` work without CAP_SYS_PTRACE.
const PTRACE: &[&str] = &["process_vm_readv", "process_vm_writev", "ptrace"];

/// Namespace flags of clone(2) (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
/// NEWNET): Docker's mask.
const CLONE_NAMESPACES: u64 = 0x7E02_0000;

/// personality(2) values Docker allows: PER_LINUX, UNAME26, PER_LINUX32, PER_LINUX32 with
/// UNAME26, and 0xffffffff (the query).
pub const PERSONALITIES: &[u64] = &[0, 8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Socket families refused: AF_ALG (the kernel's crypto API, a recurring source of
/// exploitable bugs) and AF_VSOCK (the hypervisor's sockets).
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;

/// Calls Docker allows on this host's architecture only.
fn arch_specific() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["arch_prctl", "modify_ldt"]
    } else if cfg!(target_arch = "aarch64") {
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ]
    } else {
        &[]
    }
}

/// The host's system call ABIs (a process may use any of them, so the filter covers each).
pub fn architectures() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        &[]
    }
}

/// One rule allowing `name` when argument `index` compares so with `value` (`value_two`
/// for masked comparisons). One condition per rule: conditions within a rule are ANDed by
/// the OCI spec but ORed by runc and crun when they test the same argument.
fn allow_if(name: &str, index: u32, op: &str, value: u64, value_two: u64) -> Value {
    json!({
        "names": [name],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": index, "value": value, "valueTwo": value_two, "op": op}],
    })
}

/// The profile for machines holding `capabilities`.
pub fn profile(capabilities: &[&str]) -> Value {
    let has = |cap: &str| capabilities.contains(&cap);
    let mut allowed: Vec<&str> = DOCKER_ALLOWED
        .iter()
        .chain(arch_specific())
        .chain(PTRACE)
        .copied()
        .filter(|n| !STRICTER_THAN_DOCKER.contains(n))
        .collect();
    for (cap, names) in BY_CAPABILITY {
        if has(cap) {
            allowed.extend(names.iter().copied());
        }
    }
    allowed.sort_unstable();
    allowed.dedup();
    let mut rules = vec![json!({"names": allowed, "action": "SCMP_ACT_ALLOW"})];
    rules.push(allow_if("socket", 0, "SCMP_CMP_LT", AF_ALG, 0));
    rules.push(allow_if("socket", 0, "SCMP_CMP_EQ", AF_ALG + 1, 0));
    rules.push(allow_if("socket", 0, "SCMP_CMP_GT", AF_VSOCK, 0));
    for &p in PERSONALITIES {
        rules.push(allow_if("personality", 0, "SCMP_CMP_EQ", p, 0));
    }
    if !has("CAP_SYS_ADMIN") {
        rules.push(allow_if(
            "clone",
            0,
            "SCMP_CMP_MASKED_EQ",
            CLONE_NAMESPACES,
            0,
        ));
        rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": architectures(),
        "syscalls": rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINE_CAPS: &[&str] = crate::oci::CAPABILITIES;

    /// What the profile answers for `name(arg0)`, evaluating its rules as libseccomp
    /// does: the first matching rule's action, else the default. `Ok(())` is allowed,
    /// `Err(errno)` refused.
    fn verdict(profile: &Value, name: &str, arg0: u64) -> Result<(), i64> {
        for r in profile["syscalls"].as_array().unwrap() {
            if !r["names"].as_array().unwrap().iter().any(|n| n == name) {
                continue;
            }
            let matches = match r["args"].as_array() {
                None => true,
                Some(args) => args.iter().all(|a| {
                    let (v, v2) = (
                        a["value"].as_u64().unwrap(),
                        a["valueTwo"].as_u64().unwrap(),
                    );
                    match a["op"].as_str().unwrap() {
                        "SCMP_CMP_EQ" => arg0 == v,
                        "SCMP_CMP_LT" => arg0 < v,
                        "SCMP_CMP_GT" => arg0 > v,
                        "SCMP_CMP_MASKED_EQ" => arg0 & v == v2,
                        op => panic!("unexpected op {op}"),
                    }
                }),
            };
            if matches {
                return match r["action"].as_str().unwrap() {
                    "SCMP_ACT_ALLOW" => Ok(()),
                    "SCMP_ACT_ERRNO" => Err(r["errnoRet"].as_i64().unwrap()),
                    a => panic!("unexpected action {a}"),
                };
            }
        }
        Err(profile["defaultErrnoRet"].as_i64().unwrap())
    }

    #[test]
    fn an_allow_list_refusing_with_eperm() {
        let p = profile(MACHINE_CAPS);
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], EPERM);
        assert_eq!(
            p["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        for name in [
            "read",
            "write",
            "openat",
            "execve",
            "getpid",
            "chown32",
            "socketcall",
            "arch_prctl",
            "ptrace",
            "chroot",
            "wait4",
            "io_setup",
        ] {
            assert_eq!(verdict(&p, name, 0), Ok(()), "{name}");
        }
        // Unknown to the profile, never named in it: refused all the same.
        assert_eq!(verdict(&p, "no_such_call", 0), Err(EPERM));
    }

    #[test]
    fn what_only_capabilities_machines_lack_unlock_is_refused() {
        let p = profile(MACHINE_CAPS);
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "bpf",
            "perf_event_open",
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "open_by_handle_at",
            "acct",
            "reboot",
            "iopl",
            "ioperm",
            "settimeofday",
            "clock_settime",
            "syslog",
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "mbind",
            "set_mempolicy",
            "get_mempolicy",
            "vhangup",
            "sethostname",
            "fsopen",
            "open_tree",
            "move_mount",
            "pivot_root",
            "swapon",
            "keyctl",
            "add_key",
            "request_key",
            "userfaultfd",
            "io_uring_setup",
            "quotactl",
            "lookup_dcookie",
            "name_to_handle_at",
            "clock_adjtime",
            "_sysctl",
            "uselib",
            "ustat",
            "sysfs",
            "create_module",
            "nfsservctl",
        ] {
            assert_eq!(verdict(&p, name, 0), Err(EPERM), "{name}");
        }
        assert_eq!(
            verdict(&p, "clone3", 0),
            Err(ENOSYS),
            "clone3: libc falls back"
        );
        // With the capability, Docker's rule applies (as for a privileged profile).
        let admin = profile(&["CAP_SYS_ADMIN", "CAP_SYS_BOOT"]);
        for name in ["mount", "unshare", "setns", "clone3", "reboot"] {
            assert_eq!(
                verdict(&admin, name, 0),
                Ok(()),
                "{name} with the capability"
            );
        }
        assert_eq!(verdict(&admin, "clone", 0x1000_0000), Ok(()));
    }

    #[test]
    fn clone_only_without_namespaces() {
        let p = profile(MACHINE_CAPS);
        // fork(), threads (CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|...).
        for flags in [0x11, 0x003d_0f00] {
            assert_eq!(verdict(&p, "clone", flags), Ok(()), "{flags:#x}");
        }
        for ns in [
            0x2_0000,
            0x200_0000,
            0x400_0000,
            0x800_0000,
            0x1000_0000,
            0x2000_0000,
            0x4000_0000,
        ] {
            assert_eq!(verdict(&p, "clone", ns | 0x11), Err(EPERM), "{ns:#x}");
        }
    }

    #[test]
    fn personality_allows_only_dockers_values() {
        let p = profile(MACHINE_CAPS);
        for v in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
            assert_eq!(verdict(&p, "personality", v), Ok(()), "{v:#x}");
        }
        for v in [
            1,
            0x0004_0000,
            0x0004_0008,
            0x0040_0000,
            0x8000_0000,
            0xffff_fffe,
            0x1_0000_0000,
            u64::MAX,
        ] {
            assert_eq!(verdict(&p, "personality", v), Err(EPERM), "{v:#x}");
        }
    }

    #[test]
    fn sockets_of_every_family_but_alg_and_vsock() {
        let p = profile(MACHINE_CAPS);
        for family in [1, 2, 10, 16, 17, 39, 41, 44] {
            assert_eq!(verdict(&p, "socket", family), Ok(()), "family {family}");
        }
        for family in [AF_ALG, AF_VSOCK] {
            assert_eq!(verdict(&p, "socket", family), Err(EPERM), "family {family}");
        }
    }

    #[test]
    fn every_rule_has_at_most_one_condition() {
        for r in profile(MACHINE_CAPS)["syscalls"].as_array().unwrap() {
            assert!(r["args"].as_array().map_or(0, Vec::len) <= 1, "{r}");
        }
    }

    #[test]
    fn no_name_is_both_allowed_outright_and_conditionally() {
        // A name in the first rule would be allowed whatever its conditional rules say.
        let p = profile(MACHINE_CAPS);
        let first = p["syscalls"][0]["names"].as_array().unwrap();
        for name in ["socket", "personality", "clone", "clone3"] {
            assert!(!first.iter().any(|n| n == name), "{name} allowed outright");
        }
    }
}

//! The shared isolation suite (hostile root in a machine), run against the native (crun)
//! driver with user namespaces and btrfs disk quotas. Needs root, crun, iproute2, iptables,
//! nftables, busybox-static and btrfs-progs.

mod common;

async fn setup() -> rnr_driver::conformance::Harness {
    rnr_driver::conformance::Harness {
        driver: common::driver(common::Flavour::Userns).await,
        image: common::IMAGE.to_string(),
        rootfs_tar: common::tiny_tar().await,
    }
}

rnr_driver::isolation_tests!(setup; contained: [
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
    outbound_rate_limited,
]; not_contained: []);

/// The same suite's attacks on what only the native driver has: the `crun exec` fallback
/// of machines without an agent (users resolved and rlimits set by the driver itself), and
/// the system calls its profile refuses beyond Docker 20.10's.
async fn runtime_setup() -> rnr_driver::conformance::Harness {
    common::runtime_harness().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_account_files_through_crun_exec() {
    rnr_driver::isolation::hostile_account_files(runtime_setup().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_dumps_off_through_crun_exec() {
    rnr_driver::isolation::core_dumps_off(runtime_setup().await).await;
}

/// Refused by the native profile, allowed by Docker 20.10's (so not in the shared set):
/// io_uring (a kernel surface of its own, with its own history of escapes) and
/// clock_adjtime.
const NATIVE_ONLY_DENIED: &[rnr_driver::isolation::probe::Call] = &[
    rnr_driver::isolation::probe::Call {
        name: "io_uring_setup",
        args: &["1"],
    },
    rnr_driver::isolation::probe::Call {
        name: "io_uring_enter",
        args: &["-1"],
    },
    rnr_driver::isolation::probe::Call {
        name: "io_uring_register",
        args: &["-1"],
    },
    rnr_driver::isolation::probe::Call {
        name: "clock_adjtime",
        args: &[],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_only_syscalls_refused_on_every_entry_point() {
    let h = setup().await;
    let s = rnr_driver::conformance::spec(&h, "nativesys");
    let _g = rnr_driver::conformance::Cleanup::new(&h, &s.id);
    h.driver.create(&s).await.expect("create");
    rnr_driver::isolation::probe::install(&h, &s.id).await;
    rnr_driver::isolation::assert_syscalls_refused(&h, &s.id, NATIVE_ONLY_DENIED).await;
}

//! The shared isolation suite (hostile root in a machine), run against the native (crun)
//! driver with user namespaces and btrfs disk quotas. Needs root, crun, iproute2, iptables,
//! busybox-static and btrfs-progs.

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
]; not_contained: []);

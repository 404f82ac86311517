//! The shared isolation suite (hostile root in a machine), run against a real Docker
//! Engine. Needs dockerd on /var/run/docker.sock and busybox-static.

mod common;

async fn setup() -> rnr_driver::conformance::Harness {
    common::harness("isolation", "isolation-tiny").await
}

rnr_driver::isolation_tests!(setup; contained: [
    fork_bomb,
    memory_hog,
    cpu_spin,
    other_machines_unreachable,
    host_services_unreachable,
    mounting_refused,
    kernel_module_refused,
    proc_sys_and_sys_read_only,
    reboot_refused,
    no_escape_through_proc_or_devices,
]; not_contained: [
    disk_fill = "overlay2 on extfs has no per-container quota (--storage-opt size needs xfs with pquota); a machine can fill the host disk",
]);

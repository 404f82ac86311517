//! The shared isolation suite (hostile root in a machine), run against the native (crun)
//! driver with user namespaces. Needs root, crun, iproute2, iptables and busybox-static.

mod common;

async fn setup() -> rnr_driver::conformance::Harness {
    rnr_driver::conformance::Harness {
        driver: common::driver(common::Flavour::Userns).await,
        image: common::IMAGE.to_string(),
    }
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
    disk_fill = "the writable layer is a tmpfs charged to the memory cgroup: filling it OOM-kills the machine (contained for the host and neighbours, but the machine dies); needs a project-quota filesystem for upper dirs",
]);

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
    ipv6_host_listener_unreachable,
    router_advertisement_ignored,
    raw_sockets_refused,
    spoofed_sources_dropped,
    arp_spoofing_without_effect,
    metadata_unreachable,
    private_ranges_and_smtp_unreachable,
    outbound_rate_limited,
]; not_contained: []);

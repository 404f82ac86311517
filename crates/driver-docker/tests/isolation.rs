//! The shared isolation suite (hostile root in a machine), run against a real Docker
//! Engine. Needs dockerd on /var/run/docker.sock whose storage driver enforces
//! `--storage-opt size` (btrfs: scripts/install-deps.sh starts dockerd so) and
//! busybox-static, iproute2 and nftables (the network attacks act from the host). Every test
//! fails at once on an engine without disk quotas: the suite's verdict on filling the disk
//! would be meaningless there.

mod common;

async fn setup() -> rnr_driver::conformance::Harness {
    common::harness_with_disk_quota("isolation", "isolation-tiny").await
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

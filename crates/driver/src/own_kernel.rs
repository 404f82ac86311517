//! The isolation suite for drivers whose machines have a kernel of their own (VMs).
//!
//! There root in the machine may mount, load modules, set sysctls and reboot: that is what
//! such machines are for. So the attacks of [`crate::isolation`] that a container must
//! refuse are held here to what a VM must guarantee instead: whatever the learner does in
//! their kernel stays in it (the host's mounts, modules, sysctls and files are untouched),
//! a reboot brings the machine back with its disk, and the agent's disk cannot be changed.
//! Every other attack (fork bomb, memory, disk, CPU, reaching other machines, the host's
//! services, a session impostor, the metadata service, private ranges and SMTP) is the
//! shared one, unchanged, and the neighbour's echo is timed throughout as there; the
//! outbound rate limit is the shared attack with its burst opened faster
//! ([`outbound_burst_rate_limited`]).
//!
//! The network attacks that forge frames are sent, for a container, from the host in the
//! machine's network namespace. A VM has none (its network stack is in its own kernel),
//! and its root legitimately holds raw sockets: here the same frames are forged inside,
//! by the probe, as that root, and must die where the VM's tap enters the host's bridge
//! just the same (`rnr_driver::netguard`'s pins). The attack that checks a container has
//! no raw sockets becomes one that uses them: nothing they forge leaves the tap.
//!
//! A driver crate instantiates it with `rnr_driver::own_kernel_isolation_tests!(setup);`.

use crate::conformance::Harness;
use crate::isolation::{attack, setup, tempfile_dir};
use crate::isolation_net::{self as net, frame, Forger, Link};
use crate::{collect, ExecRequest, ExecSpec};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The attacks of [`crate::isolation::ALL`] this suite replaces, with their replacement.
pub const REPLACED: &[(&str, &str)] = &[
    ("mounting_refused", "mounts_stay_inside"),
    ("kernel_module_refused", "modules_stay_inside"),
    ("proc_sys_and_sys_read_only", "sysctls_stay_inside"),
    ("reboot_refused", "reboot_comes_back"),
    (
        "no_escape_through_proc_or_devices",
        "no_host_files_or_devices",
    ),
    ("agent_cannot_be_replaced", "agent_disk_read_only"),
    (
        "syscalls_refused_on_every_entry_point",
        "syscalls_stay_inside",
    ),
    ("core_dumps_off", "core_dumps_stay_inside"),
    ("pty_quota", "ptys_stay_inside"),
    (
        "ipv6_host_listener_unreachable",
        "ipv6_from_root_unreachable",
    ),
    (
        "router_advertisement_ignored",
        "router_advertisement_from_root_ignored",
    ),
    ("raw_sockets_refused", "raw_frames_stay_pinned"),
    ("outbound_rate_limited", "outbound_burst_rate_limited"),
    (
        "spoofed_sources_dropped",
        "spoofed_sources_from_root_dropped",
    ),
    (
        "arp_spoofing_without_effect",
        "arp_spoofing_from_root_without_effect",
    ),
];

fn host_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .count()
}

pub async fn mounts_stay_inside(h: Harness) {
    let (id, _g, dog) = setup(&h, "mount").await;
    let before = host_mounts();
    let out = attack(
        &h,
        &id,
        "mkdir -p /mnt/a /mnt/b /mnt/c; mount -t tmpfs none /mnt/a && echo tmpfs; \
         mount -t proc proc /mnt/b && echo proc; mount --bind / /mnt/c && echo bind; \
         grep -c . /proc/mounts",
        Duration::from_secs(20),
    )
    .await;
    let probes = dog.finish("mounting filesystems").await;
    let said = text(&out.stdout);
    assert!(
        said.contains("tmpfs"),
        "root mounts in its own kernel: {out:?}"
    );
    assert_eq!(host_mounts(), before, "the host's mount table unchanged");
    probes.assert_prompt();
}

pub async fn modules_stay_inside(h: Harness) {
    let (id, _g, dog) = setup(&h, "module").await;
    let before = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let out = attack(
        &h,
        &id,
        "printf 'not a module' > /tmp/m.ko; insmod /tmp/m.ko; modprobe dummy; \
         cat /proc/modules | wc -l; echo done",
        Duration::from_secs(20),
    )
    .await;
    let probes = dog.finish("loading a kernel module").await;
    assert!(text(&out.stdout).contains("done"), "{out:?}");
    let after = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    assert_eq!(before, after, "the host's modules unchanged");
    probes.assert_prompt();
}

pub async fn sysctls_stay_inside(h: Harness) {
    let (id, _g, dog) = setup(&h, "procsys").await;
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let files = [
        "/proc/sys/kernel/sysrq",
        "/proc/sys/kernel/hostname",
        "/proc/sys/kernel/core_pattern",
        "/sys/class/net/lo/mtu",
    ];
    let before: Vec<String> = files.iter().map(|f| read(f)).collect();
    let out = attack(
        &h,
        &id,
        "echo 1 > /proc/sys/kernel/sysrq; echo pwned > /proc/sys/kernel/hostname; \
         echo '|/tmp/x' > /proc/sys/kernel/core_pattern; echo 1000 > /sys/class/net/lo/mtu; \
         echo 3 > /proc/sys/vm/drop_caches; cat /proc/sys/kernel/hostname",
        Duration::from_secs(20),
    )
    .await;
    let probes = dog.finish("writing /proc/sys and /sys").await;
    assert_eq!(
        text(&out.stdout).trim(),
        "pwned",
        "root tunes its own kernel: {out:?}"
    );
    let after: Vec<String> = files.iter().map(|f| read(f)).collect();
    assert_eq!(before, after, "the host's sysctls unchanged");
    probes.assert_prompt();
}

/// Retries `script` until it succeeds or `patience` runs out (a machine rebooting).
async fn sh_eventually(h: &Harness, id: &str, script: &str, patience: Duration) -> String {
    let deadline = Instant::now() + patience;
    loop {
        let req = ExecRequest::new(
            ExecSpec::new(["/bin/sh", "-c", script]),
            Duration::from_secs(20),
        );
        match collect(h.driver.as_ref(), id, req).await {
            Ok(out) if out.exit_code == Some(0) => return text(&out.stdout),
            other => {
                assert!(
                    Instant::now() < deadline,
                    "{id} did not come back within {patience:?}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

pub async fn reboot_comes_back(h: Harness) {
    let (id, _g, dog) = setup(&h, "reboot").await;
    let boot_id = |s: &str| s.trim().to_string();
    let first = sh_eventually(
        &h,
        &id,
        "echo kept > /root/mark; sync; cat /proc/sys/kernel/random/boot_id",
        Duration::from_secs(5),
    )
    .await;
    // The exec dies with the machine's kernel: its outcome is no matter.
    let _ = collect(
        h.driver.as_ref(),
        &id,
        ExecRequest::new(
            ExecSpec::new(["/bin/sh", "-c", "reboot -f"]),
            Duration::from_secs(10),
        ),
    )
    .await;
    let after = sh_eventually(
        &h,
        &id,
        "cat /root/mark /proc/sys/kernel/random/boot_id",
        Duration::from_secs(180),
    )
    .await;
    let probes = dog.finish("rebooting").await;
    let mut lines = after.lines();
    assert_eq!(lines.next(), Some("kept"), "the disk survives: {after:?}");
    assert_ne!(
        lines.next().map(boot_id),
        Some(boot_id(&first)),
        "the kernel rebooted"
    );
    let info = h.driver.inspect(&id).await.expect("inspect");
    assert_eq!(info.status, crate::MachineStatus::Running);
    probes.assert_prompt();
}

pub async fn no_host_files_or_devices(h: Harness) {
    let (id, _g, dog) = setup(&h, "escape").await;
    let dir = tempfile_dir();
    let secret = format!("secret-{}-{}", std::process::id(), id);
    let secret_path = dir.join("secret");
    std::fs::write(&secret_path, &secret).unwrap();
    let p = secret_path.display();
    let (major, minor) = crate::isolation::root_device();
    // The host's root device numbers name the VM's own disks in there; memory is its own.
    let script = format!(
        "cat /proc/1/root{p} {p}; for d in /proc/[0-9]*; do cat $d/root{p}; done; \
         mknod /tmp/disk b {major} {minor} && head -c 4194304 /tmp/disk | grep -c secret-; \
         head -c 4194304 /dev/mem 2>/dev/null | grep -c secret-; echo done"
    );
    let out = attack(&h, &id, &script, Duration::from_secs(60)).await;
    let probes = dog.finish("reading the host's files and devices").await;
    let _ = std::fs::remove_dir_all(&dir);
    let said = text(&out.stdout);
    assert!(said.contains("done"), "{out:?}");
    assert!(!said.contains(&secret), "a host file read: {said}");
    probes.assert_prompt();
}

pub async fn agent_disk_read_only(h: Harness) {
    let (id, _g, dog) = setup(&h, "agentswap").await;
    let out = attack(
        &h,
        &id,
        "mkdir -p /tmp/fake && cp /bin/sh /tmp/fake/rnr-agent; \
         mv /.rnr /rnr-moved 2>/dev/null && echo MOVED; \
         cp /bin/sh /.rnr/rnr-agent 2>/dev/null && echo REPLACED; \
         rm -f /.rnr/rnr-agent 2>/dev/null && echo REMOVED; \
         mount -o remount,rw /.rnr 2>/dev/null && echo REMOUNTED; \
         mount --bind /tmp/fake /.rnr 2>/dev/null; echo done",
        Duration::from_secs(20),
    )
    .await;
    let probes = dog.finish("agent replacement").await;
    let said = text(&out.stdout);
    assert!(said.contains("done"), "{out:?}");
    for what in ["MOVED", "REPLACED", "REMOVED", "REMOUNTED"] {
        assert!(
            !said.contains(what),
            "the agent's disk could be {what}: {said}"
        );
    }
    // Covering /.rnr is the learner's kernel's business; the running agent is not on it.
    crate::isolation::real_agent_answers(&h, &id).await;
    probes.assert_prompt();
}

/// The calls a container's filter refuses are the VM kernel's own business: issued on every
/// entry point they leave the host as it was (its clock, its modules) and the machine alive.
pub async fn syscalls_stay_inside(h: Harness) {
    use crate::isolation::probe;
    let (id, _g, dog) = setup(&h, "syscalls").await;
    probe::install(&h, &id).await;
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let (wall, mono) = (std::time::SystemTime::now(), Instant::now());
    let answers = probe::syscalls(&h, &id, crate::isolation::DENIED_SYSCALLS).await;
    let probes = dog.finish("system calls on three entry points").await;
    assert!(
        answers.len() >= crate::isolation::DENIED_SYSCALLS.len(),
        "every call was issued: {answers:?}"
    );
    let drift = wall.elapsed().unwrap_or_default().as_secs_f64() - mono.elapsed().as_secs_f64();
    assert!(drift.abs() < 2.0, "the host's clock moved by {drift} s");
    assert_eq!(
        std::fs::read_to_string("/proc/modules").unwrap_or_default(),
        modules,
        "the host's modules unchanged"
    );
    let out = attack(&h, &id, "echo alive", Duration::from_secs(20)).await;
    assert_eq!(text(&out.stdout), "alive\n", "machine lives on: {out:?}");
    probes.assert_prompt();
}

/// A crash's core goes to the VM kernel's own `core_pattern` handler, run in the VM: the
/// path by which a container's crash would run the host's helper does not exist here.
pub async fn core_dumps_stay_inside(h: Harness) {
    let (id, _g, dog) = setup(&h, "core").await;
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let out = attack(
        &h,
        &id,
        "printf '#!/bin/sh\\ncat > /root/core-seen\\n' > /root/core-helper && \
         chmod 755 /root/core-helper && echo '|/root/core-helper' > /proc/sys/kernel/core_pattern \
         && ulimit -c unlimited && sh -c 'kill -SEGV $$'; \
         for i in $(seq 50); do [ -s /root/core-seen ] && break; sleep 0.2; done; \
         echo seen=$(wc -c < /root/core-seen)",
        Duration::from_secs(30),
    )
    .await;
    let probes = dog.finish("dumping core").await;
    let said = text(&out.stdout);
    let size: u64 = said
        .split("seen=")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(size > 0, "the VM's own handler took the core: {out:?}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default(),
        pattern,
        "the host's core_pattern unchanged"
    );
    probes.assert_prompt();
}

/// Thousands of ptys opened in the VM come from its kernel's pool (its memory limit may
/// stop them first): the host's pool does not move, and the neighbour's terminal, timed
/// throughout, keeps answering.
pub async fn ptys_stay_inside(h: Harness) {
    use crate::isolation::probe;
    use futures::StreamExt;
    let (id, _g, dog) = setup(&h, "ptys").await;
    probe::install(&h, &id).await;
    let host_ptys = || {
        std::fs::read_to_string("/proc/sys/kernel/pty/nr")
            .ok()
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("the host's /proc/sys/kernel/pty/nr")
    };
    let before = host_ptys();
    let mut held = h
        .driver
        .exec(&id, ExecSpec::new([probe::PATH, "ptys", "4000", "60"]))
        .await
        .expect("start the pty probe");
    let mut said = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(chunk)) = held.output.next().await {
            let (crate::OutputChunk::Stdout(b) | crate::OutputChunk::Stderr(b)) = chunk;
            said.push_str(&text(&b));
            if said.contains("opened=") && said.ends_with('\n') {
                break;
            }
        }
    })
    .await;
    let during = host_ptys();
    let _ = held.stdin.write_all(b"x\n").await;
    drop(held);
    let probes = dog.finish("holding 4,000 ptys").await;
    eprintln!("machine {id}: {said:?}; host ptys {before} -> {during}");
    assert!(
        during < before + 100,
        "the VM's ptys are its kernel's, not the host's: {before} -> {during} ({said:?})"
    );
    probes.assert_prompt();
}

/// The host's IPv6 addresses and listeners stay out of reach of the VM, by its shell's
/// tools and by UDP frames its root forges (a VM's kernel may well run IPv6 on its eth0:
/// the tap lets none of it into the bridge).
pub async fn ipv6_from_root_unreachable(h: Harness) {
    net::ipv6_host_unreachable(h, Forger::MachineRoot).await
}

/// A router advertisement the VM's root sends makes no address or route on the host.
pub async fn router_advertisement_from_root_ignored(h: Harness) {
    net::router_advertisement(h, Forger::MachineRoot).await
}

/// Frames the VM's root forges with another machine's, the gateway's or a stranger's
/// sources reach neither the host's flows nor the neighbour.
pub async fn spoofed_sources_from_root_dropped(h: Harness) {
    net::spoofed_sources(h, Forger::MachineRoot).await
}

/// ARP replies and announcements the VM's root forges (for a neighbour's address, for
/// the gateway's) change neither the host's nor the neighbour's ARP table.
pub async fn arp_spoofing_from_root_without_effect(h: Harness) {
    net::arp_spoofing(h, Forger::MachineRoot).await
}

/// [`crate::isolation::outbound_rate_limited`] with the burst opened by the probe from one
/// process: the shared attack forks an `nc` per connection, which an emulated VM (TCG)
/// does slower than the limit, so that every connection would pass and prove nothing.
pub async fn outbound_burst_rate_limited(h: Harness) {
    net::outbound_rate(h, true).await
}

/// In place of [`crate::isolation::raw_sockets_refused`]: a VM's root has raw sockets (its
/// own kernel's), and what they forge must not leave its tap. From inside, through a
/// packet socket: frames with another source MAC, another IPv4 source, the gateway's
/// address, IPv6, a VLAN tag, an unknown protocol, ARP for the gateway's address and ARP
/// from another MAC. A capture on every host interface sees each of them arrive on
/// exactly one (the VM's port: they did leave the VM) and go nowhere from there, while a
/// true frame sent the same way reaches the host's bridge too.
pub async fn raw_frames_stay_pinned(h: Harness) {
    let (id, _g, dog) = setup(&h, "rawframes").await;
    let link = Link::of(&h, &id, Forger::MachineRoot).await;
    let (mac, gw) = link.eth0().await;
    let me = match h.driver.inspect(&id).await.expect("inspect").address {
        Some(IpAddr::V4(a)) => a,
        other => panic!("machine {id} has an IPv4 address: {other:?}"),
    };
    let gw_mac = net::host_mac_of(gw);
    let needle = format!("rnr-raw-{}-{id}:", std::process::id()).into_bytes();
    let mark = |tag: u8| [&needle[..], &[tag]].concat();
    let udp = |src_mac, src: Ipv4Addr, tag| {
        let p = frame::ipv4_udp(src, 7011, gw, 9, &mark(tag));
        frame::ethernet(gw_mac, src_mac, frame::IPV4, &p)
    };
    let zero = [0u8; 6];
    let arp = |sha, spa, tag| {
        let a = [frame::arp(1, sha, spa, zero, gw), mark(tag)].concat();
        frame::ethernet(net::BROADCAST, mac, frame::ARP, &a)
    };
    let ll = frame::link_local(mac);
    let all_nodes = frame::multicast_mac(frame::ALL_NODES);
    let v6 = frame::ipv6_udp(ll, 7011, frame::ALL_NODES, 9, &mark(3));
    // 802.1Q, VLAN 5, carrying an IPv4 datagram with the VM's own addresses.
    let tagged = [
        &[0x00, 0x05, 0x08, 0x00][..],
        &frame::ipv4_udp(me, 7011, gw, 9, &mark(4)),
    ]
    .concat();
    let forged = vec![
        udp(net::FORGED_MAC, me, 0),
        udp(mac, Ipv4Addr::new(198, 51, 100, 9), 1),
        udp(mac, gw, 2),
        frame::ethernet(all_nodes, mac, frame::IPV6, &v6),
        frame::ethernet(gw_mac, mac, 0x8100, &tagged),
        frame::ethernet(net::BROADCAST, mac, 0x88b5, &mark(5)),
        arp(mac, gw, 6),
        arp(net::FORGED_MAC, me, 7),
    ];
    const TRUE: u8 = 99;
    let count = forged.len() as u8;
    let sniffer = net::Sniffer::start(needle.clone());
    for _ in 0..3 {
        link.send(forged.clone()).await;
    }
    link.send(vec![udp(mac, me, TRUE)]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = sniffer.finish();
    let probes = dog.finish("forging frames with raw sockets").await;
    let gw_if = crate::isolation::host_ipv4_interfaces()
        .into_iter()
        .find(|(_, a)| *a == gw)
        .map(|(n, _)| n)
        .unwrap_or_else(|| panic!("no host interface holds {gw}"));
    let on = |tag: u8| -> Vec<&net::Sighting> { seen.iter().filter(|s| s.tag == tag).collect() };
    let truth = on(TRUE);
    assert!(
        truth.iter().any(|s| s.ifname == gw_if),
        "control: machine {id}'s true frame reaches the bridge {gw_if}: {truth:?}"
    );
    for tag in 0..count {
        let sightings = on(tag);
        let Some(port) = sightings.first().map(|s| s.ifname.clone()) else {
            panic!("control: forged frame {tag} left machine {id} (seen: {seen:?})")
        };
        assert!(
            port != gw_if
                && sightings
                    .iter()
                    .all(|s| s.ifname == port && s.pkttype != libc::PACKET_OUTGOING),
            "forged frame {tag} of machine {id} went past its port {port}: {sightings:?}"
        );
    }
    probes.assert_prompt();
}

/// Asserts that the shared attacks named plus the ones this suite replaces are the whole
/// isolation suite: an attack added there fails here until a VM driver runs it.
pub fn assert_complete(shared: &[&str]) {
    let mut named: Vec<&str> = shared.to_vec();
    named.extend(REPLACED.iter().map(|(old, _)| *old));
    named.sort_unstable();
    let mut all = crate::isolation::ALL.to_vec();
    all.sort_unstable();
    assert_eq!(named, all, "the isolation suite is instantiated in full");
}

/// Instantiates the isolation suite for a driver whose machines have their own kernel:
/// the shared attacks, and this module's in place of those a VM's root may carry out.
#[macro_export]
macro_rules! own_kernel_isolation_tests {
    ($setup:path) => {
        $crate::own_kernel_isolation_tests!(@shared $setup;
            fork_bomb, memory_hog, disk_fill, cpu_spin, other_machines_unreachable,
            host_services_unreachable, session_impostor_reaches_nobody, hostile_account_files,
            metadata_unreachable, private_ranges_and_smtp_unreachable);
        $crate::own_kernel_isolation_tests!(@own $setup;
            mounts_stay_inside, modules_stay_inside, sysctls_stay_inside, reboot_comes_back,
            no_host_files_or_devices, agent_disk_read_only, syscalls_stay_inside,
            core_dumps_stay_inside, ptys_stay_inside, ipv6_from_root_unreachable,
            router_advertisement_from_root_ignored, raw_frames_stay_pinned,
            spoofed_sources_from_root_dropped, arp_spoofing_from_root_without_effect,
            outbound_burst_rate_limited);
    };
    (@shared $setup:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::isolation::$name($setup().await).await;
            }
        )*
        #[test]
        fn isolation_suite_is_complete() {
            $crate::own_kernel::assert_complete(&[$(stringify!($name)),*]);
        }
    };
    (@own $setup:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::own_kernel::$name($setup().await).await;
            }
        )*
    };
}

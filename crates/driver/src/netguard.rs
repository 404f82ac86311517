//! What every driver's host-side network guard is made of, so that they hold machines to
//! the same rules:
//!
//! * the sysctls of a machine's network namespace: no IPv6, ICMP datagram ("ping") sockets
//!   for every group (machines have no CAP_NET_RAW, hence no raw sockets);
//! * an nftables table of the `bridge` family pinning each machine's bridge port to its MAC
//!   and IPv4 address ([`pin_table_script`]): frames from a machine pass only with its own
//!   Ethernet source, IPv4 source, and ARP sender; anything else (IPv6, other protocols,
//!   forged sources, ARP claiming another address) is dropped before the bridge or the host
//!   sees it. One rule set per table, one set element per machine: a lookup in a hash set,
//!   flat in the number of machines;
//! * for machines with outbound access, iptables rules in front of the accept: a
//!   per-machine limit on new connections, no private, link-local (a cloud's metadata
//!   service), loopback, multicast or reserved destinations (DNS to the host's own
//!   resolvers aside, [`host_resolvers`]), no SMTP ([`outbound_rules`]);
//! * pings of the gateway, rate-limited ([`gateway_ping_rule`]); no other host service.
//!
//! A port belongs to the table by its interface group ([`iface_group`]): set on the host end
//! of every machine's veth, so a port of the platform without a pin (yet) drops everything.

use std::net::Ipv4Addr;

/// Destinations a machine with outbound access never reaches (DNS to the host's resolvers
/// aside, see [`host_resolvers`]): "this" network, private
/// ranges (RFC 1918), shared address space (RFC 6598, carrier-grade NAT), loopback,
/// link-local (the metadata service of every major cloud is 169.254.169.254), multicast,
/// reserved and broadcast. The platform's own subnet is private too: the gateway stays
/// reachable because traffic to it is the host's INPUT, not forwarded.
pub const BLOCKED_DESTINATIONS: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// TCP ports a machine never connects to outside: SMTP (spam from throwaway machines).
pub const BLOCKED_TCP_PORTS: &[u16] = &[25];

/// New outbound connections a machine may open per second, sustained...
pub const NEW_CONNECTIONS_PER_SECOND: u32 = 20;
/// ...and at once: enough for a package manager's parallel downloads, not for a scan.
pub const NEW_CONNECTIONS_BURST: u32 = 50;

/// Echo requests to its gateway a machine may send per second, and at once.
pub const GATEWAY_PINGS_PER_SECOND: u32 = 10;
pub const GATEWAY_PINGS_BURST: u32 = 20;

/// The sysctls of every machine's network namespace. `ping_max_gid` is the highest group
/// id inside the machine: the kernel refuses a range with a group its writer's user
/// namespace does not map.
pub fn machine_sysctls(ping_max_gid: u32) -> Vec<(&'static str, String)> {
    vec![
        ("net.ipv6.conf.all.disable_ipv6", "1".into()),
        ("net.ipv6.conf.default.disable_ipv6", "1".into()),
        ("net.ipv4.ping_group_range", format!("0 {ping_max_gid}")),
    ]
}

/// Turns IPv6 off on host interface `ifname` (a bridge, a machine's veth): no address,
/// no router advertisement taken, so a machine has nothing to reach there. Hosts booted
/// without IPv6 have nothing to turn off.
pub fn disable_ipv6(ifname: &str) -> std::io::Result<()> {
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    for (key, value) in [("disable_ipv6", "1"), ("accept_ra", "0")] {
        let path = format!("/proc/sys/net/ipv6/conf/{ifname}/{key}");
        std::fs::write(&path, value)
            .map_err(|e| std::io::Error::new(e.kind(), format!("writing {path}: {e}")))?;
    }
    Ok(())
}

/// The interface group marking the ports of table `seed` (a bridge or the Docker
/// engine's platform networks): stable across runs, distinct per seed, never the default
/// group 0.
pub fn iface_group(seed: &str) -> u32 {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in seed.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    0x7200_0000 | (h & 0x00ff_ffff)
}

/// Name of the pins set in every table.
pub const PIN_SET: &str = "pins";

/// An `nft -f` script that creates (if missing) the bridge-family table `table` with its
/// set of pins (kept: the machines' elements survive a restart) and rewrites its chain.
/// Ports in group `group` pass only frames whose (port, source MAC, IPv4 source) or
/// (port, source MAC, ARP sender address) and (port, ARP sender MAC, ARP sender address)
/// are pinned; other ports are not the table's business.
pub fn pin_table_script(table: &str, group: u32) -> String {
    let t = format!("bridge {table}");
    let set = PIN_SET;
    format!(
        "add table {t}\n\
         add set {t} {set} {{ type ifname . ether_addr . ipv4_addr; }}\n\
         add chain {t} ingress {{ type filter hook prerouting priority -200; policy accept; }}\n\
         flush chain {t} ingress\n\
         add rule {t} ingress meta iifgroup != {group} accept\n\
         add rule {t} ingress ether type ip iifname . ether saddr . ip saddr @{set} accept\n\
         add rule {t} ingress ether type arp iifname . ether saddr . arp saddr ip @{set} \
           iifname . arp saddr ether . arp saddr ip @{set} accept\n\
         add rule {t} ingress counter drop\n"
    )
}

/// iptables rule specifications (without `-A <chain>`) for what a machine with outbound
/// access sends, each starting with `matches` (which traffic they govern), to go before
/// the rule accepting it: new connections beyond the rate (per source address, in the
/// hashlimit table `limit_name`, at most 15 bytes) are dropped; DNS to `resolvers` goes
/// to `allow`; blocked destinations and ports are refused.
pub fn outbound_rules(
    matches: &[&str],
    limit_name: &str,
    resolvers: &[Ipv4Addr],
    allow: &str,
) -> Vec<Vec<String>> {
    let reject = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"];
    let with = |rest: &[&str]| -> Vec<String> {
        matches.iter().chain(rest).map(|s| s.to_string()).collect()
    };
    let limit = hashlimit(
        "--hashlimit-above",
        NEW_CONNECTIONS_PER_SECOND,
        NEW_CONNECTIONS_BURST,
        limit_name,
    );
    let new = ["-m", "conntrack", "--ctstate", "NEW"].map(String::from);
    let mut rules = vec![with(&[])
        .into_iter()
        .chain(new)
        .chain(limit)
        .chain(["-j".into(), "DROP".into()])
        .collect::<Vec<String>>()];
    for r in resolvers {
        let r = r.to_string();
        for proto in ["udp", "tcp"] {
            rules.push(with(&["-d", &r, "-p", proto, "--dport", "53", "-j", allow]));
        }
    }
    rules.extend(
        BLOCKED_DESTINATIONS
            .iter()
            .map(|d| with(&[&["-d", d], &reject[..]].concat())),
    );
    for port in BLOCKED_TCP_PORTS {
        let port = port.to_string();
        rules.push(with(
            &[&["-p", "tcp", "--dport", port.as_str()], &reject[..]].concat(),
        ));
    }
    rules
}

/// The IPv4 name servers the host resolves with, loopback aside: /etc/resolv.conf's, and
/// systemd-resolved's upstream ones when that points at its local stub. Docker's embedded
/// DNS sends a machine's queries to them from the machine's own network namespace, and
/// they are often private (a cloud network's resolver): they stay reachable on port 53,
/// and on nothing else.
pub fn host_resolvers() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for path in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
        for r in nameservers(&std::fs::read_to_string(path).unwrap_or_default()) {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out
}

/// The non-loopback IPv4 `nameserver`s of a resolv.conf.
fn nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then_some(())?;
            w.next()?.parse::<Ipv4Addr>().ok()
        })
        .filter(|a| !a.is_loopback())
        .collect()
}

/// An iptables rule specification letting echo requests that match `matches` through to
/// `target`, rate-limited per source in the hashlimit table `limit_name`.
pub fn gateway_ping_rule(matches: &[&str], limit_name: &str, target: &str) -> Vec<String> {
    let ping = ["-p", "icmp", "--icmp-type", "echo-request"];
    let limit = hashlimit(
        "--hashlimit-upto",
        GATEWAY_PINGS_PER_SECOND,
        GATEWAY_PINGS_BURST,
        limit_name,
    );
    matches
        .iter()
        .chain(&ping)
        .map(|s| s.to_string())
        .chain(limit)
        .chain(["-j".into(), target.to_string()])
        .collect()
}

/// A hashlimit match per source address: `mode` is `--hashlimit-above` (matches past the
/// rate) or `--hashlimit-upto` (matches within it).
fn hashlimit(mode: &str, per_second: u32, burst: u32, name: &str) -> Vec<String> {
    let rate = format!("{per_second}/sec");
    let burst = burst.to_string();
    let args = [
        "-m",
        "hashlimit",
        mode,
        &rate,
        "--hashlimit-burst",
        &burst,
        "--hashlimit-mode",
        "srcip",
        "--hashlimit-name",
        name,
    ];
    args.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_stable_and_distinct() {
        assert_eq!(iface_group("rnr-br0"), iface_group("rnr-br0"));
        assert_ne!(iface_group("rnr-br0"), iface_group("rnr-br1"));
        assert_ne!(iface_group("docker"), 0);
    }

    #[test]
    fn outbound_rules_govern_what_they_match() {
        let dns = [Ipv4Addr::new(10, 0, 0, 2)];
        let rules = outbound_rules(&["-i", "br+"], "rnr-x", &dns, "ACCEPT");
        assert!(rules.iter().all(|r| r[..2] == ["-i", "br+"]));
        let at = |needle: &[&str]| {
            rules
                .iter()
                .position(|r| r.windows(needle.len()).any(|w| w == needle))
                .unwrap_or_else(|| panic!("no rule with {needle:?}"))
        };
        // The limit first, the resolvers' DNS before the private ranges are refused.
        assert_eq!(at(&["hashlimit"]), 0);
        assert!(at(&["-d", "10.0.0.2", "-p", "udp", "--dport", "53"]) < at(&["-d", "10.0.0.0/8"]));
        assert!(at(&["-d", "169.254.0.0/16"]) > 0);
    }

    #[test]
    fn resolvers_come_from_nameserver_lines() {
        let conf = "# comment\nsearch example\nnameserver 10.255.255.53\n\
                    nameserver 127.0.0.53\nnameserver fd00::1\nnameserver  1.1.1.1 # x\n";
        assert_eq!(
            nameservers(conf),
            [Ipv4Addr::new(10, 255, 255, 53), Ipv4Addr::new(1, 1, 1, 1)]
        );
    }
}

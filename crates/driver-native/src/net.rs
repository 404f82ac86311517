//! Machine networking: platform-owned bridges with a gateway address each, one veth pair
//! per machine, an address allocator, and the platform's iptables chains.
//!
//! Addresses come from the configured subnet: the lower half for machines without
//! outbound access, the upper half for those with it, so that one static rule per half
//! (not one per machine) decides who may leave. A Linux bridge takes at most 1,024 ports,
//! so a subnet larger than a /22 is cut into /22 segments, each on a bridge of its own
//! (`<bridge>` for the first, `<bridge>-<n in hex>` for the others, created when the first
//! machine lands in them) whose `.1` is the gateway of its machines. The chains match every
//! segment's bridge with the `<bridge>+` wildcard, named after the bridge so several
//! platforms can share a host:
//!
//! * `RNRF-<bridge>` (filter, jumped to from the top of `FORWARD` for traffic in or out of
//!   the bridges): replies to host-initiated or allowed connections pass; machine → machine
//!   (same or another segment) is dropped; machines of the outbound half may leave, but
//!   not to private, link-local (metadata), loopback, multicast or reserved destinations
//!   (DNS to the host's resolvers aside) nor to SMTP, and at a limited rate of new
//!   connections (`rnr_driver::netguard`); everything else is dropped.
//! * `RNRI-<bridge>` (filter, from `INPUT -i <bridge>+`): machines reach no service of the
//!   host; only replies to connections the host opened, and pings of the gateway
//!   (rate-limited), pass.
//! * `RNRN-<bridge>` (nat, from `POSTROUTING`): masquerades the outbound half.
//!
//! Before any of that, the nftables table `bridge rnr-<bridge>` pins every machine's port
//! (the host end of its veth, in the bridge's interface group) to the machine's MAC and
//! IPv4 address: forged sources, ARP claiming another address, IPv6 and anything not IPv4
//! or ARP are dropped as they enter the bridge. One element per machine, added when it is
//! wired and deleted with it ([`wire_host`], [`unpin`]); the vm driver pins its VMs' taps
//! the same way ([`pin`], [`unpin_port`]). The bridges have IPv6 off (no
//! address to reach, no router advertisement taken), the host ends no IPv6 address (a
//! port's own stack never sees the machine's frames), the machines no IPv6 at all.
//!
//! Bridge ports are also marked `isolated`, so machines cannot reach each other even when
//! br_netfilter is off. The host reaches every machine port (its packets leave by OUTPUT).

use crate::error::{NResult, NativeError};
use crate::netlink;
use rnr_driver::netguard;
use std::net::Ipv4Addr;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

/// A parsed IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub base: u32,
    pub prefix: u8,
}

impl Subnet {
    /// Parses `a.b.c.d/n` (n between 8 and 28).
    pub fn parse(s: &str) -> NResult<Self> {
        let bad = || NativeError::Invalid {
            id: s.to_string(),
            message: "subnet must look like 10.231.0.0/16 (prefix 8..=28)".into(),
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=28).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            base: u32::from(addr) & mask,
            prefix,
        })
    }

    /// Number of addresses in the subnet.
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// Prefix of one bridge segment: a /22 (1,024 addresses, a bridge's port limit) or
    /// the whole subnet when it is smaller.
    pub fn segment_prefix(&self) -> u8 {
        self.prefix.max(22)
    }

    fn segment_size(&self) -> u32 {
        1u32 << (32 - self.segment_prefix())
    }

    /// Number of bridge segments.
    pub fn segments(&self) -> u32 {
        self.size() / self.segment_size()
    }

    /// The segment holding the address at offset `index`.
    pub fn segment_of(&self, index: u32) -> u32 {
        index / self.segment_size()
    }

    /// The gateway of segment `seg` (its `.1`), on the segment's bridge.
    pub fn gateway(&self, seg: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + seg * self.segment_size() + 1)
    }

    /// Whether offset `index` may be given to a machine: not a segment's network,
    /// gateway or broadcast address.
    pub fn usable(&self, index: u32) -> bool {
        let o = index % self.segment_size();
        o >= 2 && o != self.segment_size() - 1 && index < self.size()
    }

    /// Address at offset `index`.
    pub fn addr(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + index)
    }

    /// Offsets for machines with (`true`) or without outbound access (filter them with
    /// [`Subnet::usable`]).
    pub fn range(&self, outbound: bool) -> std::ops::Range<u32> {
        let half = self.size() / 2;
        if outbound {
            half..self.size() - 1
        } else {
            2..half
        }
    }

    /// The upper half in CIDR notation (machines allowed out).
    pub fn outbound_cidr(&self) -> String {
        format!("{}/{}", self.addr(self.size() / 2), self.prefix + 1)
    }

    /// The whole subnet in CIDR notation.
    pub fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// Runs a command, turning a failure into an error naming `id` and its stderr.
pub async fn run(id: &str, program: &str, args: &[&str], stdin: Option<&str>) -> NResult<String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_cmd(id, cmd, stdin).await
}

/// Runs a prepared command (see [`run`]).
pub async fn run_cmd(
    id: &str,
    cmd: tokio::process::Command,
    stdin: Option<&str>,
) -> NResult<String> {
    run_cmd_within(id, cmd, stdin, None).await
}

/// [`run_cmd`], killing the command and failing if it has not finished within `limit`.
pub async fn run_cmd_within(
    id: &str,
    mut cmd: tokio::process::Command,
    stdin: Option<&str>,
    limit: Option<std::time::Duration>,
) -> NResult<String> {
    let desc = format!("{:?}", cmd.as_std());
    // Dropped on a timeout: the command is killed rather than left running.
    cmd.kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| NativeError::io(format!("machine {id}: spawning {desc}"), e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| NativeError::io(format!("machine {id}: writing to {desc}"), e))?;
    }
    let waited = child.wait_with_output();
    let out = match limit {
        Some(limit) => tokio::time::timeout(limit, waited).await.map_err(|_| {
            NativeError::other(
                id,
                format!(
                    "{desc} did not finish within {} s and was killed",
                    limit.as_secs_f64()
                ),
            )
        })?,
        None => waited.await,
    }
    .map_err(|e| NativeError::io(format!("machine {id}: waiting for {desc}"), e))?;
    if !out.status.success() {
        return Err(NativeError::Command {
            id: id.to_string(),
            command: desc,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Chain names for `bridge`.
pub fn chains(bridge: &str) -> (String, String, String) {
    (
        format!("RNRF-{bridge}"),
        format!("RNRI-{bridge}"),
        format!("RNRN-{bridge}"),
    )
}

async fn ipt(args: &[&str]) -> NResult<String> {
    let mut full = vec!["-w"];
    full.extend_from_slice(args);
    run("-", "iptables", &full, None).await
}

/// Adds `rule` to `chain` of `table` unless it is there already; `insert` puts it first.
async fn ensure_rule(table: &str, chain: &str, rule: &[&str], insert: bool) -> NResult<()> {
    let mut check = vec!["-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if ipt(&check).await.is_ok() {
        return Ok(());
    }
    let mut add = vec!["-t", table, if insert { "-I" } else { "-A" }, chain];
    if insert {
        add.push("1");
    }
    add.extend_from_slice(rule);
    ipt(&add).await.map(|_| ())
}

/// Name of the bridge of segment `seg`.
pub fn segment_bridge(bridge: &str, seg: u32) -> String {
    if seg == 0 {
        bridge.to_string()
    } else {
        format!("{bridge}-{seg:x}")
    }
}

/// Creates (if missing) the bridge of segment `seg` with its gateway address, up.
/// Idempotent, and safe against another instance doing the same.
pub async fn ensure_segment(bridge: &str, subnet: &Subnet, seg: u32) -> NResult<String> {
    let name = segment_bridge(bridge, seg);
    let gw = format!("{}/{}", subnet.gateway(seg), subnet.segment_prefix());
    if !std::path::Path::new("/sys/class/net").join(&name).exists() {
        // Another instance may create it meanwhile; the address/up steps below still run.
        let _ = run(&name, "ip", &["link", "add", &name, "type", "bridge"], None).await;
    }
    netguard::disable_ipv6(&name).map_err(|e| NativeError::io(format!("bridge {name}"), e))?;
    run(&name, "ip", &["addr", "replace", &gw, "dev", &name], None).await?;
    run(&name, "ip", &["link", "set", &name, "up"], None).await?;
    Ok(name)
}

/// Creates (if missing) the first segment's bridge and the pin table (keeping its pins),
/// and (re)writes the chains. Idempotent: safe to run at every start.
pub async fn ensure_bridge(bridge: &str, subnet: &Subnet) -> NResult<()> {
    ensure_segment(bridge, subnet, 0).await?;
    // Outbound machines are routed (and masqueraded) by the host.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| NativeError::io("/proc/sys/net/ipv4/ip_forward", e))?;

    let script = netguard::pin_table_script(&pin_table(bridge), netguard::iface_group(bridge));
    run(bridge, "nft", &["-f", "-"], Some(&script)).await?;
    let (fwd, inp, nat) = chains(bridge);
    let out_cidr = subnet.outbound_cidr();
    let cidr = subnet.cidr();
    let all = format!("{bridge}+");
    let all = all.as_str();
    // Hashlimit tables, named after the bridge (15 bytes at most).
    let (limit, pings) = (format!("rnrc-{bridge}"), format!("rnrp-{bridge}"));
    for (table, chain) in [("filter", &fwd), ("filter", &inp), ("nat", &nat)] {
        let _ = ipt(&["-t", table, "-N", chain]).await;
        ipt(&["-t", table, "-F", chain]).await?;
    }
    let established = [
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "ACCEPT",
    ];
    let mut r = vec!["-o", all];
    r.extend_from_slice(&established);
    ipt(&[&["-A", fwd.as_str()], r.as_slice()].concat()).await?;
    ipt(&["-A", &fwd, "-i", all, "-o", all, "-j", "DROP"]).await?;
    let outbound = ["-i", all, "-s", out_cidr.as_str()];
    // Established flows skip the outbound filter: they passed it when they were new.
    ipt(&[&["-A", fwd.as_str()], &outbound[..], &established[..]].concat()).await?;
    let resolvers = netguard::host_resolvers();
    for rule in netguard::outbound_rules(&outbound, &limit, &resolvers, "ACCEPT") {
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        ipt(&[&["-A", fwd.as_str()], rule.as_slice()].concat()).await?;
    }
    ipt(&[&["-A", fwd.as_str()], &outbound[..], &["-j", "ACCEPT"]].concat()).await?;
    ipt(&["-A", &fwd, "-j", "DROP"]).await?;
    ipt(&[&["-A", inp.as_str()], &established[..]].concat()).await?;
    // The gateways are the only local addresses in the subnet.
    let ping = netguard::gateway_ping_rule(&["-d", &cidr], &pings, "ACCEPT");
    let ping: Vec<&str> = ping.iter().map(String::as_str).collect();
    ipt(&[&["-A", inp.as_str()], ping.as_slice()].concat()).await?;
    ipt(&["-A", &inp, "-j", "DROP"]).await?;
    ipt(&[
        "-t",
        "nat",
        "-A",
        &nat,
        "-s",
        &out_cidr,
        "!",
        "-o",
        all,
        "-j",
        "MASQUERADE",
    ])
    .await?;
    // Jumps written by versions that matched the first bridge only.
    for (table, chain, rule) in [
        ("filter", "FORWARD", vec!["-o", bridge, "-j", fwd.as_str()]),
        ("filter", "FORWARD", vec!["-i", bridge, "-j", fwd.as_str()]),
        ("filter", "INPUT", vec!["-i", bridge, "-j", inp.as_str()]),
    ] {
        let mut del = vec!["-t", table, "-D", chain];
        del.extend_from_slice(&rule);
        while ipt(&del).await.is_ok() {}
    }
    ensure_rule("filter", "FORWARD", &["-o", all, "-j", &fwd], true).await?;
    ensure_rule("filter", "FORWARD", &["-i", all, "-j", &fwd], true).await?;
    ensure_rule("filter", "INPUT", &["-i", all, "-j", &inp], true).await?;
    ensure_rule("nat", "POSTROUTING", &["-s", &cidr, "-j", &nat], true).await?;
    Ok(())
}

/// Removes the chains, the jumps to them, the pin table and every segment's bridge.
/// Missing pieces are ignored.
pub async fn remove_bridge(bridge: &str, subnet: &Subnet) {
    let (fwd, inp, nat) = chains(bridge);
    let cidr = subnet.cidr();
    let all = format!("{bridge}+");
    let jumps: [(&str, &str, Vec<&str>); 7] = [
        ("filter", "FORWARD", vec!["-o", &all, "-j", &fwd]),
        ("filter", "FORWARD", vec!["-i", &all, "-j", &fwd]),
        ("filter", "INPUT", vec!["-i", &all, "-j", &inp]),
        ("filter", "FORWARD", vec!["-o", bridge, "-j", &fwd]),
        ("filter", "FORWARD", vec!["-i", bridge, "-j", &fwd]),
        ("filter", "INPUT", vec!["-i", bridge, "-j", &inp]),
        ("nat", "POSTROUTING", vec!["-s", &cidr, "-j", &nat]),
    ];
    for (table, chain, rule) in jumps {
        let mut del = vec!["-t", table, "-D", chain];
        del.extend_from_slice(&rule);
        while ipt(&del).await.is_ok() {}
    }
    for (table, chain) in [("filter", &fwd), ("filter", &inp), ("nat", &nat)] {
        let _ = ipt(&["-t", table, "-F", chain]).await;
        let _ = ipt(&["-t", table, "-X", chain]).await;
    }
    let table = pin_table(bridge);
    let _ = run(bridge, "nft", &["delete", "table", "bridge", &table], None).await;
    for seg in 0..subnet.segments() {
        let name = segment_bridge(bridge, seg);
        if std::path::Path::new("/sys/class/net").join(&name).exists() {
            let _ = run(&name, "ip", &["link", "del", &name], None).await;
        }
    }
}

/// The nftables bridge-family table pinning the machines of the platform on `bridge`.
pub fn pin_table(bridge: &str) -> String {
    format!("rnr-{bridge}")
}

/// The MAC address of the machine at `addr`: locally administered, derived from the
/// address, so its pin needs nothing recorded.
pub fn machine_mac(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0x72, o[0], o[1], o[2], o[3]]
}

/// The key of a machine's pin: (its bridge port, its MAC, its address), each field padded
/// to 4 bytes as nf_tables lays out concatenations.
fn pin_key(port: &str, mac: [u8; 6], addr: Ipv4Addr) -> [u8; 28] {
    let mut k = [0u8; 28];
    let name = port.as_bytes();
    k[..name.len().min(15)].copy_from_slice(&name[..name.len().min(15)]);
    k[16..22].copy_from_slice(&mac);
    k[24..28].copy_from_slice(&addr.octets());
    k
}

/// The host side of a machine's network, from the create path's blocking thread: the veth
/// pair (`eth0` with the machine's MAC, in the namespace of `pid`; `veth` on the host, in
/// the platform's interface group, without an IPv6 address) enslaved to `segment` and up,
/// the port isolated, and the machine pinned in the table of `bridge`.
pub fn wire_host(
    bridge: &str,
    segment: &str,
    veth: &str,
    pid: i32,
    addr: Ipv4Addr,
) -> std::io::Result<()> {
    let mut s = netlink::Socket::open()?;
    let master = netlink::index_of(segment)?;
    let group = netguard::iface_group(bridge);
    s.add_veth(veth, pid, master, group, machine_mac(addr))?;
    std::fs::write(format!("/sys/class/net/{veth}/brport/isolated"), "1")?;
    pin(bridge, veth, machine_mac(addr), addr)
}

/// Pins bridge port `port` of the platform on `bridge` to `mac` and `addr`: frames entering
/// the bridge there pass only with those as their sources (see the module's documentation).
/// The port must be in the bridge's interface group ([`netguard::iface_group`]).
pub fn pin(bridge: &str, port: &str, mac: [u8; 6], addr: Ipv4Addr) -> std::io::Result<()> {
    let key = pin_key(port, mac, addr);
    netlink::Socket::open_netfilter()?.set_element(
        &pin_table(bridge),
        netguard::PIN_SET,
        &key,
        true,
    )
}

/// Deletes the pin of the machine at `addr` on `veth` (see [`wire_host`]); a missing one
/// is not an error.
pub fn unpin(bridge: &str, veth: &str, addr: Ipv4Addr) -> std::io::Result<()> {
    unpin_port(bridge, veth, machine_mac(addr), addr)
}

/// Deletes the pin [`pin`] made; a missing one is not an error.
pub fn unpin_port(bridge: &str, port: &str, mac: [u8; 6], addr: Ipv4Addr) -> std::io::Result<()> {
    let key = pin_key(port, mac, addr);
    match netlink::Socket::open_netfilter()?.set_element(
        &pin_table(bridge),
        netguard::PIN_SET,
        &key,
        false,
    ) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Name of the host end of a machine's veth pair (at most 15 bytes).
pub fn veth_name(seed: &str, id: &str) -> String {
    // FNV-1a: stable across runs and builds, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes().chain([0]).chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("rv{:012x}", h & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_halves() {
        let s = Subnet::parse("10.231.7.9/16").unwrap();
        assert_eq!(s.cidr(), "10.231.0.0/16");
        assert_eq!(s.gateway(0).to_string(), "10.231.0.1");
        assert_eq!(s.range(false), 2..32768);
        assert_eq!(s.range(true), 32768..65535);
        // /22 segments, one bridge each (a bridge takes at most 1,024 ports).
        assert_eq!((s.segment_prefix(), s.segments()), (22, 64));
        assert_eq!(s.gateway(1).to_string(), "10.231.4.1");
        assert_eq!(s.segment_of(1023), 0);
        assert_eq!(s.segment_of(1026), 1);
        assert!(s.usable(2) && s.usable(1022) && s.usable(1026));
        assert!(!s.usable(1023) && !s.usable(1024) && !s.usable(1025) && !s.usable(65536));
        let small = Subnet::parse("10.1.2.0/24").unwrap();
        assert_eq!((small.segment_prefix(), small.segments()), (24, 1));
        assert!(small.usable(254) && !small.usable(255));
        assert_eq!(segment_bridge("rnr-br0", 0), "rnr-br0");
        assert_eq!(segment_bridge("rnr-br0", 0x3fff), "rnr-br0-3fff");
        assert_eq!(s.outbound_cidr(), "10.231.128.0/17");
        assert!(Subnet::parse("10.0.0.0/30").is_err());
        assert!(Subnet::parse("nope").is_err());
    }

    #[test]
    fn veth_names_fit() {
        let n = veth_name("/var/lib/rnr", "a-very-long-machine-identifier-0123456789");
        assert!(n.len() <= 15, "{n}");
        assert_ne!(n, veth_name("/var/lib/rnr", "other"));
    }
}

//! Keeps machines away from the host's own services, from each other's addresses and, with
//! outbound access, from where no machine may go (`rnr_driver::netguard` has the rules
//! both drivers share). Docker lets a container reach every port of the host through its
//! network's gateway address (and the host's other addresses): traffic to the host enters
//! by INPUT on the network's bridge, which Docker leaves open. The platform adds,
//! idempotently at every connect:
//!
//! * `RNR-DOCKER-IN`, jumped to from the top of INPUT: replies to connections the host
//!   opened (the checker, the terminal) return to INPUT, and so do pings of a bridge's
//!   gateway (rate-limited); anything else arriving on one of the platform's bridges is
//!   dropped;
//! * `RNR-DOCKER-OUT`, jumped to from the top of FORWARD for traffic leaving the outbound
//!   network's bridge: a limited rate of new connections, no private, link-local
//!   (metadata), loopback, multicast or reserved destinations (DNS to the host's resolvers
//!   aside: the engine's embedded DNS forwards from the machine), no SMTP; what passes
//!   returns to Docker's own rules;
//! * the nftables table `bridge rnr-docker`, shared by every platform on the engine: each
//!   machine's port (the host end of its veth, put in the table's interface group when the
//!   machine starts) passes only frames with the machine's own MAC and IPv4 address (and
//!   ARP claiming nothing else); IPv6 and other protocols are dropped. One set element per
//!   machine, added by [`pin`] and deleted by [`unpin`]; [`sweep_pins`] drops those whose
//!   port is gone (a platform that died before deleting its machines);
//! * IPv6 off on the bridges and the machines' veths (the machines turn it off inside too,
//!   `HostConfig.sysctls`).
//!
//! Rules stay as long as the host runs (they name the bridge of a network that outlives
//! the platform's process); `remove_bridge_rules` takes one bridge's rules out.

use bollard::models::ContainerInspectResponse;
use rnr_driver::{netguard, DriverError, Result};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

/// The platform's chain in the filter table for traffic to the host.
pub const CHAIN: &str = "RNR-DOCKER-IN";
/// The platform's chain in the filter table for traffic leaving the outbound network.
pub const OUT_CHAIN: &str = "RNR-DOCKER-OUT";
/// The nftables bridge-family table pinning machines to their addresses.
pub const PIN_TABLE: &str = "rnr-docker";
/// Hashlimit tables: new outbound connections, pings of the gateway.
const CONN_LIMIT: &str = "rnr-docker-out";
const PING_LIMIT: &str = "rnr-docker-png";

/// The interface group of every machine's port.
fn group() -> u32 {
    netguard::iface_group(PIN_TABLE)
}

/// The bridge interface Docker gives a network with id `network_id`.
pub fn bridge_name(network_id: &str) -> String {
    format!("br-{}", &network_id[..network_id.len().min(12)])
}

/// Runs `program` with `args` (and `stdin`), returning its stdout or its stderr.
async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> std::result::Result<String, String> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| format!("{program}: writing its input: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

async fn ipt(args: &[&str]) -> std::result::Result<(), String> {
    run("iptables", &[&["-w"], args].concat(), None)
        .await
        .map(drop)
}

/// Adds `rule` to `chain` unless present; `first` inserts it at the top.
async fn ensure(chain: &str, rule: &[&str], first: bool) -> std::result::Result<(), String> {
    if ipt(&[&["-C", chain], rule].concat()).await.is_ok() {
        return Ok(());
    }
    let add: &[&str] = if first {
        &["-I", chain, "1"]
    } else {
        &["-A", chain]
    };
    ipt(&[add, rule].concat()).await
}

/// Packets of flows under way return to the chain that jumped here.
const ESTABLISHED: [&str; 6] = [
    "-m",
    "conntrack",
    "--ctstate",
    "ESTABLISHED,RELATED",
    "-j",
    "RETURN",
];

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Drops traffic from `bridge` to the host, except replies to the host's own connections
/// and pings of `gateway`; makes the pin table; turns IPv6 off on the bridge.
pub async fn protect_host(bridge: &str, gateway: Option<Ipv4Addr>) -> Result<()> {
    let fail = |e: String| DriverError::Backend {
        id: bridge.to_string(),
        message: format!("cannot add the host-protection rules: {e}"),
    };
    netguard::disable_ipv6(bridge).map_err(|e| fail(e.to_string()))?;
    let script = netguard::pin_table_script(PIN_TABLE, group());
    run("nft", &["-f", "-"], Some(&script))
        .await
        .map_err(fail)?;
    let _ = ipt(&["-N", CHAIN]).await;
    ensure(CHAIN, &ESTABLISHED, true).await.map_err(fail)?;
    if let Some(gw) = gateway {
        let gw = gw.to_string();
        let ping = netguard::gateway_ping_rule(&["-i", bridge, "-d", &gw], PING_LIMIT, "RETURN");
        ensure(CHAIN, &strs(&ping), true).await.map_err(fail)?;
    }
    ensure(CHAIN, &["-i", bridge, "-j", "DROP"], false)
        .await
        .map_err(fail)?;
    ensure("INPUT", &["-j", CHAIN], true).await.map_err(fail)
}

/// Filters what leaves the outbound network's `bridge` (see the module's documentation).
/// The chain is rewritten in one iptables-restore transaction: never empty, never stale.
pub async fn protect_outbound(bridge: &str) -> Result<()> {
    let fail = |e: String| DriverError::Backend {
        id: bridge.to_string(),
        message: format!("cannot add the outbound rules: {e}"),
    };
    // Established flows skip the filter: they passed it when they were new.
    let mut rules = vec![ESTABLISHED.map(String::from).to_vec()];
    let resolvers = netguard::host_resolvers();
    rules.extend(netguard::outbound_rules(
        &[],
        CONN_LIMIT,
        &resolvers,
        "RETURN",
    ));
    let mut script = format!("*filter\n:{OUT_CHAIN} - [0:0]\n");
    for r in rules {
        script.push_str(&format!("-A {OUT_CHAIN} {}\n", r.join(" ")));
    }
    script.push_str("COMMIT\n");
    run("iptables-restore", &["-w", "--noflush"], Some(&script))
        .await
        .map_err(fail)?;
    ensure("FORWARD", &["-i", bridge, "-j", OUT_CHAIN], true)
        .await
        .map_err(fail)
}

/// Removes `bridge`'s rules (the network is gone); the chains stay for others.
pub async fn remove_bridge_rules(bridge: &str) {
    for chain in [CHAIN, "FORWARD"] {
        let Ok(rules) = run("iptables", &["-w", "-S", chain], None).await else {
            continue;
        };
        // In FORWARD, only the jump is ours (Docker removes its own rules with the network).
        let mine = |r: &str| {
            format!("{r} ").contains(&format!(" -i {bridge} "))
                && (chain == CHAIN || r.ends_with(&format!("-j {OUT_CHAIN}")))
        };
        for rule in rules.lines().filter(|r| mine(r)) {
            let Some(spec) = rule.strip_prefix(&format!("-A {chain} ")) else {
                continue;
            };
            let _ = ipt(&[
                &["-D", chain][..],
                &spec.split_whitespace().collect::<Vec<_>>(),
            ]
            .concat())
            .await;
        }
    }
}

/// What pins a running machine: the host end of its veth, its MAC and IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    veth: String,
    mac: String,
    addr: Ipv4Addr,
}

impl Pin {
    /// The running container `c`'s pin (machine `id`), its veth found through the
    /// container's sysfs (which shows its own network namespace).
    pub fn of(id: &str, c: &ContainerInspectResponse, proc_root: &Path) -> Result<Self> {
        let fail = |m: String| DriverError::backend(id, m);
        let pid = c
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .ok_or_else(|| fail("not running: no pid".into()))?;
        let endpoint = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .and_then(|n| {
                n.values()
                    .find(|e| e.ip_address.as_deref().is_some_and(|a| !a.is_empty()))
            })
            .ok_or_else(|| fail("no network endpoint with an address".into()))?;
        let addr: Ipv4Addr = endpoint
            .ip_address
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| fail(format!("address {:?}: {e}", endpoint.ip_address)))?;
        let mac = endpoint
            .mac_address
            .clone()
            .filter(|m| m.len() == 17)
            .ok_or_else(|| fail(format!("MAC address {:?}", endpoint.mac_address)))?;
        let iflink = proc_root
            .join(pid.to_string())
            .join("root/sys/class/net/eth0/iflink");
        let index: u32 = std::fs::read_to_string(&iflink)
            .map_err(|e| fail(format!("reading {}: {e}", iflink.display())))?
            .trim()
            .parse()
            .map_err(|e| fail(format!("{}: {e}", iflink.display())))?;
        let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes, NUL included, to `name`.
        let p = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
        if p.is_null() {
            let e = std::io::Error::last_os_error();
            return Err(fail(format!(
                "no host interface {index} (eth0's peer): {e}"
            )));
        }
        // SAFETY: on success `name` holds a NUL-terminated string.
        let veth = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok(Self { veth, mac, addr })
    }

    fn element(&self) -> String {
        format!("\"{}\" . {} . {}", self.veth, self.mac, self.addr)
    }
}

/// Adds (`verb` "add") or deletes ("delete") the pins `elements` in one nft command.
async fn pins(verb: &str, elements: &[String]) -> std::result::Result<(), String> {
    let set = format!("{{ {} }}", elements.join(", "));
    let args = [
        verb,
        "element",
        "bridge",
        PIN_TABLE,
        netguard::PIN_SET,
        &set,
    ];
    run("nft", &args, None).await.map(drop)
}

/// Pins machine `id` (see the module's documentation): its port joins the table's group,
/// loses IPv6, and passes only the machine's own addresses from then on.
pub async fn pin(id: &str, pin: &Pin) -> Result<()> {
    let fail = |m: String| DriverError::backend(id, format!("pinning veth {}: {m}", pin.veth));
    // The element first: the group alone drops everything.
    pins("add", &[pin.element()]).await.map_err(fail)?;
    netguard::disable_ipv6(&pin.veth).map_err(|e| fail(e.to_string()))?;
    let group = group().to_string();
    let args = ["link", "set", "dev", &pin.veth, "group", &group];
    run("ip", &args, None).await.map_err(fail).map(drop)
}

/// Deletes a machine's pin; a missing one is not an error.
pub async fn unpin(pin: &Pin) {
    if let Err(e) = pins("delete", &[pin.element()]).await {
        tracing::debug!(veth = %pin.veth, error = %e, "deleting a pin");
    }
}

/// Deletes the pins whose port is gone: machines that stopped before they were deleted,
/// and those of a platform that died.
pub async fn sweep_pins() {
    let args = ["-j", "list", "set", "bridge", PIN_TABLE, netguard::PIN_SET];
    let listing = match run("nft", &args, None).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the machines' pins");
            return;
        }
    };
    let stale: Vec<String> = listed_pins(&listing)
        .into_iter()
        .filter(|p| !Path::new("/sys/class/net").join(&p.veth).exists())
        .map(|p| p.element())
        .collect();
    if !stale.is_empty() {
        if let Err(e) = pins("delete", &stale).await {
            tracing::warn!(error = %e, "cannot delete stale pins");
        }
    }
}

/// The pins in the output of `nft -j list set`.
fn listed_pins(json: &str) -> Vec<Pin> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let elems = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["set"]["elem"].as_array())
        .flatten();
    elems
        .filter_map(|e| {
            let c = e["concat"].as_array()?;
            Some(Pin {
                veth: c.first()?.as_str()?.to_string(),
                mac: c.get(1)?.as_str()?.to_string(),
                addr: c.get(2)?.as_str()?.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pins_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"set": {"family": "bridge", "name": "pins", "table": "rnr-docker",
             "elem": [{"concat": ["veth1a2b3c4", "02:42:ac:12:00:02", "172.18.0.2"]}]}}]}"#;
        let pins = listed_pins(json);
        assert_eq!(
            pins,
            vec![Pin {
                veth: "veth1a2b3c4".into(),
                mac: "02:42:ac:12:00:02".into(),
                addr: Ipv4Addr::new(172, 18, 0, 2),
            }]
        );
        assert_eq!(
            pins[0].element(),
            "\"veth1a2b3c4\" . 02:42:ac:12:00:02 . 172.18.0.2"
        );
        assert!(listed_pins("not json").is_empty());
    }
}

//! Keeps machines away from the host's own services. Docker lets a container reach every
//! port of the host through its network's gateway address (and the host's other
//! addresses): traffic to the host enters by INPUT on the network's bridge, which Docker
//! leaves open. The platform adds, idempotently at every connect, one chain of its own,
//! `RNR-DOCKER-IN`, jumped to from the top of INPUT:
//!
//! * replies to connections the host opened (the checker, the terminal) return to INPUT;
//! * anything else arriving on one of the platform's bridges is dropped.
//!
//! Rules stay as long as the host runs (they name the bridge of a network that outlives
//! the platform's process); `remove_bridge_rules` takes one bridge's rule out.

use rnr_driver::{DriverError, Result};

/// The platform's chain in the filter table.
pub const CHAIN: &str = "RNR-DOCKER-IN";

/// The bridge interface Docker gives a network with id `network_id`.
pub fn bridge_name(network_id: &str) -> String {
    format!("br-{}", &network_id[..network_id.len().min(12)])
}

async fn ipt(args: &[&str]) -> std::result::Result<(), String> {
    let out = tokio::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
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

/// Drops traffic from `bridge` to the host, except replies to the host's own connections.
pub async fn protect_host(bridge: &str) -> Result<()> {
    let fail = |e: String| DriverError::Backend {
        id: bridge.to_string(),
        message: format!("cannot add the host-protection rules (iptables): {e}"),
    };
    let _ = ipt(&["-N", CHAIN]).await;
    let established = [
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "RETURN",
    ];
    ensure(CHAIN, &established, true).await.map_err(fail)?;
    ensure(CHAIN, &["-i", bridge, "-j", "DROP"], false)
        .await
        .map_err(fail)?;
    ensure("INPUT", &["-j", CHAIN], true).await.map_err(fail)
}

/// Removes `bridge`'s rule (the network is gone); the chain itself stays for others.
pub async fn remove_bridge_rules(bridge: &str) {
    while ipt(&["-D", CHAIN, "-i", bridge, "-j", "DROP"])
        .await
        .is_ok()
    {}
}

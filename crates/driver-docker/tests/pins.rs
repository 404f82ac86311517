//! The pins of Docker machines (see `firewall.rs`): made at create, deleted with the
//! machine, and swept when the machine died first: deleted while stopped, or found dead by
//! a platform starting again. Needs dockerd on /var/run/docker.sock, busybox-static, nft.

mod common;

use rnr_driver::conformance::{spec, Cleanup};
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether the shared pin table has an element for `addr`.
fn pinned(addr: IpAddr) -> bool {
    rnr_driver::isolation::listed_pins("rnr-docker").contains(&format!(". {addr}"))
}

/// Kills the container of machine `id` from the host, as if it had died: its init (which
/// ignores every signal it can from inside) is SIGKILLed and the container stops.
fn kill_from_host(id: &str) {
    let st = Command::new("docker")
        .args(["kill", &format!("rnr-{id}")])
        .output()
        .expect("docker kill");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// Waits until the element for `addr` is gone, up to a few seconds.
async fn unpinned(addr: IpAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pinned(addr) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

fn address(info: &rnr_driver::MachineInfo) -> IpAddr {
    info.address
        .unwrap_or_else(|| panic!("machine {} has an address", info.id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_follow_machines_and_dead_ones_are_swept() {
    let h = common::harness("pins", "pins-tiny").await;
    let s = spec(&h, "pinned");
    let _g = Cleanup::new(&h, &s.id);
    let info = h.driver.create(&s).await.expect("create");
    let addr = address(&info);
    assert!(pinned(addr), "machine {} ({addr}) pinned", s.id);
    h.driver.delete(&s.id).await.expect("delete");
    assert!(unpinned(addr).await, "pin of {} ({addr}) deleted", s.id);

    // One test, not several: machines made one after the other may reuse an address,
    // the pins' only trace visible here.
    // Deleted once stopped: its veth, the key to its pin, is gone already.
    let s = spec(&h, "stopped");
    let _g = Cleanup::new(&h, &s.id);
    let addr = address(&h.driver.create(&s).await.expect("create"));
    kill_from_host(&s.id);
    assert!(pinned(addr), "the dead machine's pin outlives it");
    h.driver
        .delete(&s.id)
        .await
        .expect("delete a stopped machine");
    assert!(
        unpinned(addr).await,
        "pin of stopped {} swept on delete",
        s.id
    );
    // Died while no platform ran: the next one to connect sweeps it.
    let s = spec(&h, "orphan");
    let _g2 = Cleanup::new(&h, &s.id);
    let addr = address(&h.driver.create(&s).await.expect("create"));
    kill_from_host(&s.id);
    let _restarted = common::harness("pins", "pins-tiny").await;
    assert!(
        unpinned(addr).await,
        "pin of dead {} swept at connect",
        s.id
    );
}

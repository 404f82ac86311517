//! The pins of VMs' taps (`rnr_driver::netguard`, via `rnr_driver_native::net::pin`):
//! made at create, before the tap is up; deleted with the machine, when its QEMU dies, and
//! by the next driver for a VM that died while none ran; nothing left behind. Needs what
//! the conformance suite needs, and nft.

mod common;

use rnr_driver::conformance::{spec, Cleanup};
use rnr_driver::Driver;
use rnr_driver_vm::VmConfig;
use std::process::Command;
use std::time::{Duration, Instant};

/// The tap, MAC and QEMU pid of machine `id`, from its record.
fn meta(cfg: &VmConfig, id: &str) -> (String, String, i32) {
    let path = cfg.state_dir.join("machines").join(id).join("meta.json");
    let text = std::fs::read_to_string(&path).expect("meta.json");
    let m: serde_json::Value = serde_json::from_str(&text).expect("meta.json is JSON");
    let index = m["index"].as_u64().expect("index") as u32;
    let b = index.to_be_bytes();
    let mac = format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3]);
    (
        m["tap"].as_str().expect("tap").to_string(),
        mac,
        m["pid"].as_i64().expect("pid") as i32,
    )
}

fn table(cfg: &VmConfig) -> String {
    format!("rnr-{}", cfg.bridge)
}

/// The pin table's elements, as `nft` lists them.
fn pins(cfg: &VmConfig) -> String {
    rnr_driver::isolation::listed_pins(&table(cfg))
}

/// Whether `tap` is pinned (to `mac`).
fn pinned(cfg: &VmConfig, tap: &str, mac: &str) -> bool {
    pins(cfg).contains(&format!("\"{tap}\" . {mac} . "))
}

/// Waits until `tap`'s pin is gone, up to a few seconds.
async fn unpinned(cfg: &VmConfig, tap: &str, mac: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pinned(cfg, tap, mac) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Kills QEMU `pid` from the host, as a crash would.
fn kill(pid: i32) {
    // SAFETY: kill(2) of the QEMU process this test's driver started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
}

/// The elements of the set, without the listing's header (the set's type, name).
fn elements(listing: &str) -> String {
    listing
        .split_once("elements")
        .map(|(_, e)| e.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_follow_vms_and_dead_ones_are_swept() {
    let h = common::harness().await;
    let d = common::driver().await;
    let cfg = d.config().clone();
    let before = pins(&cfg);

    let s = spec(&h, "pinned");
    let _g = Cleanup::new(&h, &s.id);
    h.driver.create(&s).await.expect("create");
    let (tap, mac, _) = meta(&cfg, &s.id);
    assert!(
        pinned(&cfg, &tap, &mac),
        "tap {tap} pinned to {mac}: {}",
        pins(&cfg)
    );
    // In the interface group the table filters (else its frames would pass unpinned).
    let link = Command::new("ip")
        .args(["link", "show", "dev", &tap])
        .output();
    let link = String::from_utf8_lossy(&link.expect("ip link").stdout).into_owned();
    let group = rnr_driver::netguard::iface_group(&cfg.bridge);
    assert!(
        link.contains(&format!(" group {group} ")),
        "tap {tap} in group {group}: {link}"
    );
    h.driver.delete(&s.id).await.expect("delete");
    assert!(
        unpinned(&cfg, &tap, &mac).await,
        "pin of {tap} deleted: {}",
        pins(&cfg)
    );

    // Crashed: its QEMU killed from the host, the pin goes with it.
    let s = spec(&h, "crashed");
    let _g = Cleanup::new(&h, &s.id);
    h.driver.create(&s).await.expect("create");
    let (tap, mac, pid) = meta(&cfg, &s.id);
    assert!(pinned(&cfg, &tap, &mac), "tap {tap} pinned");
    kill(pid);
    assert!(
        unpinned(&cfg, &tap, &mac).await,
        "pin of crashed {tap} deleted: {}",
        pins(&cfg)
    );
    h.driver.delete(&s.id).await.expect("delete a crashed VM");

    // Died while no driver watched it: its pin left behind (put back by hand here, as the
    // reaper of this process took it), swept by the next driver on the state dir.
    let s = spec(&h, "orphan");
    let _g = Cleanup::new(&h, &s.id);
    h.driver.create(&s).await.expect("create");
    let (tap, mac, pid) = meta(&cfg, &s.id);
    let addr = h.driver.inspect(&s.id).await.unwrap().address.unwrap();
    kill(pid);
    assert!(
        unpinned(&cfg, &tap, &mac).await,
        "pin of killed {tap} deleted"
    );
    let element = format!("{{ \"{tap}\" . {mac} . {addr} }}");
    let st = Command::new("nft")
        .args(["add", "element", "bridge", &table(&cfg), "pins", &element])
        .output()
        .expect("nft");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(pinned(&cfg, &tap, &mac), "the orphan's pin is back");
    let again = rnr_driver_vm::VmDriver::new(cfg.clone())
        .await
        .expect("a second driver on the same state dir");
    assert!(
        unpinned(&cfg, &tap, &mac).await,
        "pin of dead {tap} swept by the next driver: {}",
        pins(&cfg)
    );
    again.delete(&s.id).await.expect("delete the orphan");

    assert_eq!(
        elements(&pins(&cfg)),
        elements(&before),
        "no pin left behind"
    );
}

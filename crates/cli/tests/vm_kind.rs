//! Machines of kind `vm` beside containers on one platform, through the API: a VM has a
//! kernel of its own while a container shares the host's, both survive a restart of
//! `rnr serve`, and a platform without `[vm] enabled` refuses a VM saying why.
//!
//! Runs the real vm driver (QEMU, Debian's kernel): with KVM where it can boot a stock
//! kernel, else emulated (TCG), said in the output. Needs root, qemu-system-x86,
//! linux-image-cloud-amd64 and busybox-static (scripts/install-deps.sh).

mod common;

use common::Server;
use reqwest::Method;
use serde_json::json;

/// The accelerator: `RNR_VM_ACCEL`, else KVM where it can run Debian's kernel.
fn accel() -> &'static str {
    match std::env::var("RNR_VM_ACCEL").as_deref() {
        Ok("tcg") => "tcg",
        Ok("kvm") => "kvm",
        _ => match rnr_driver_vm::kvm_usable() {
            Ok(()) => "kvm",
            Err(e) => {
                eprintln!("NOTE: VMs run emulated (TCG) in this test: {e}");
                "tcg"
            }
        },
    }
}

/// Deletes the machines through the API while the server lives, then the vm driver's
/// bridge, chains and cgroups.
struct Cleanup<'a> {
    server: &'a Server,
    ids: Vec<String>,
    bridge: String,
    subnet: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self
                .server
                .call(Method::DELETE, &format!("/api/v1/machines/{id}"), None);
        }
        let mut cfg = rnr_driver_vm::VmConfig::new(
            self.server.data_dir.join("vm"),
            self.server.instance_owner(),
        );
        cfg.bridge = self.bridge.clone();
        cfg.subnet = self.subnet.clone();
        cfg.agent = std::env::var_os("RNR_AGENT_PATH").map(Into::into);
        cfg.accel = rnr_driver_vm::Accel::Tcg;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            if let Ok(d) = rnr_driver_vm::VmDriver::new(cfg).await {
                d.teardown().await;
            }
        });
    }
}

fn uname(s: &Server, id: &str) -> String {
    let out = s.exec(id, "uname -r");
    assert_eq!(out["exit_code"], 0, "uname in {id}: {out}");
    out["stdout"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn vm_and_container_side_by_side() {
    let pid = std::process::id();
    let bridge = format!("rvk{}", pid % 100_000);
    let subnet = format!("10.{}.{}.0/24", 150 + pid % 40, pid / 40 % 250);
    let accel = accel();
    let mut s = Server::start(&[
        ("RNR_VM__ENABLED", "true"),
        ("RNR_VM__ACCEL", accel),
        ("RNR_VM__BRIDGE", &bridge),
        ("RNR_VM__SUBNET", &subnet),
        ("RNR_VM__DISK_MIB", "512"),
        ("RNR_VM__BOOT_TIMEOUT_SECONDS", "120"),
    ]);
    let mut guard = Cleanup {
        server: &s,
        ids: Vec::new(),
        bridge: bridge.clone(),
        subnet,
    };
    let container = s.create(json!({}));
    let c = container["id"].as_str().unwrap().to_string();
    guard.ids.push(c.clone());
    let vm = s.create(json!({"kind": "vm"}));
    let v = vm["id"].as_str().unwrap().to_string();
    guard.ids.push(v.clone());
    assert_eq!(vm["state"], "running", "{vm}");

    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(uname(&s, &c), host, "a container shares the host's kernel");
    let guest = uname(&s, &v);
    assert_ne!(guest, host, "a VM runs a kernel of its own");
    assert!(
        std::path::Path::new(&format!("/boot/vmlinuz-{guest}")).exists(),
        "the VM runs the Debian kernel {guest}"
    );

    // A restart finds the VM again (the platform asks every driver what it has). The
    // guard borrows the server it restarts: let go of it without deleting, then anew.
    std::mem::forget(guard);
    s.restart_after_sigkill();
    let guard = Cleanup {
        server: &s,
        ids: vec![c.clone(), v.clone()],
        bridge,
        subnet: format!("10.{}.{}.0/24", 150 + pid % 40, pid / 40 % 250),
    };
    let (status, m) = s.call(Method::GET, &format!("/api/v1/machines/{v}"), None);
    assert_eq!((status, m["state"].as_str()), (200, Some("running")), "{m}");
    assert_eq!(uname(&s, &v), guest, "the same VM after the restart");
    assert_eq!(uname(&s, &c), host);

    for id in [&v, &c] {
        let (status, body) = s.call(Method::DELETE, &format!("/api/v1/machines/{id}"), None);
        assert_eq!(status, 204, "delete {id}: {body}");
    }
    let qemu_left = std::process::Command::new("pgrep")
        .args(["-f", &format!("qemu-system.*{v}")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert!(
        qemu_left.is_empty(),
        "QEMU of {v} still running: {qemu_left}"
    );
    drop(guard);
}

#[test]
fn vm_refused_where_not_enabled() {
    let s = Server::start(&[]);
    let (status, body) = s.call(
        Method::POST,
        "/api/v1/machines",
        Some(json!({"kind": "vm"})),
    );
    assert_eq!(status, 422, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("kind vm") && msg.contains("[vm] enabled is false"),
        "says why: {body}"
    );
    let (status, body) = s.call(
        Method::POST,
        "/api/v1/machines",
        Some(json!({"kind": "vmm"})),
    );
    assert!(status == 400 || status == 422, "{status} {body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("vmm"), "names the bad kind: {body}");
}

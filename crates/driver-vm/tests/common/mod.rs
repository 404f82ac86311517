//! Shared test setup: one VM driver per test process with its own state dir, owner,
//! bridge and subnet, the tiny (busybox) image imported, all torn down (machines, bridge,
//! iptables chains, cgroups, state dir) when the process exits.
//!
//! The accelerator is `RNR_VM_ACCEL` (`kvm`, the default, or `tcg`). A host where KVM
//! cannot run a stock kernel fails here, saying why: the suites never pass silently.

#![allow(dead_code)]

use rnr_driver::Driver;
use rnr_driver_vm::{Accel, VmConfig, VmDriver};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

pub const IMAGE: &str = "tiny";

static CREATED: Mutex<Vec<(Arc<VmDriver>, PathBuf)>> = Mutex::new(Vec::new());
static DRIVER: OnceCell<Arc<VmDriver>> = OnceCell::const_new();
static TAR: OnceCell<PathBuf> = OnceCell::const_new();
/// Scratch directories to remove at exit.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn teardown_all() {
    let drivers = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|p| p.into_inner()));
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        for (d, dir) in drivers {
            for m in d.list().await.unwrap_or_default() {
                if let Err(e) = d.delete(&m.id).await {
                    eprintln!("teardown: deleting {}: {e}", m.id);
                }
            }
            d.teardown().await;
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
    for dir in std::mem::take(&mut *DIRS.lock().unwrap_or_else(|p| p.into_inner())) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn register_atexit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a plain `extern "C" fn()` that takes no arguments.
        unsafe { libc::atexit(teardown_all) };
    });
}

/// The accelerator the suites run with.
pub fn accel() -> Accel {
    match std::env::var("RNR_VM_ACCEL").as_deref() {
        Ok("tcg") => Accel::Tcg,
        _ => Accel::Kvm,
    }
}

/// The busybox rootfs tarball, built once per test process.
pub async fn tiny_tar() -> PathBuf {
    TAR.get_or_init(|| async {
        let dir = tempfile::Builder::new()
            .prefix("rnr-vm-img-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let out = dir.join("tiny.tar");
        rnr_images::build_tiny(
            std::path::Path::new("/bin/busybox"),
            &dir,
            &out,
            &rnr_images::NoProgress,
        )
        .expect("build the tiny image (apt-get install busybox-static)");
        register_atexit();
        DIRS.lock().unwrap_or_else(|p| p.into_inner()).push(dir);
        out
    })
    .await
    .clone()
}

/// The config of this process's driver.
pub fn config(state_dir: &std::path::Path) -> VmConfig {
    let pid = std::process::id();
    let mut cfg = VmConfig::new(state_dir, format!("vmtest-{pid}"));
    cfg.bridge = format!("rvt{}", pid % 100_000);
    cfg.subnet = format!("10.{}.{}.0/22", 200 + pid % 50, (pid / 50 % 60) * 4);
    cfg.agent = Some(rnr_driver::conformance::agent_path());
    cfg.accel = accel();
    // Below the isolation suite's 1 GiB disk fill.
    cfg.disk_mib = 512;
    cfg.console_log = true;
    cfg.boot_timeout_seconds = if cfg.accel == Accel::Tcg { 120 } else { 30 };
    cfg
}

/// This process's driver, with the tiny image imported.
pub async fn driver() -> Arc<VmDriver> {
    DRIVER
        .get_or_init(|| async {
            let dir = tempfile::Builder::new()
                .prefix("rnr-vm-")
                .tempdir_in("/var/tmp")
                .unwrap()
                .keep();
            let driver = match VmDriver::new(config(&dir)).await {
                Ok(d) => Arc::new(d),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    panic!("the vm driver cannot run on this host: {e}");
                }
            };
            register_atexit();
            CREATED.lock().unwrap().push((driver.clone(), dir));
            driver
                .images()
                .import(IMAGE, &tiny_tar().await)
                .await
                .expect("import the tiny image");
            driver
        })
        .await
        .clone()
}

pub async fn harness() -> rnr_driver::conformance::Harness {
    rnr_driver::conformance::Harness {
        driver: driver().await,
        image: IMAGE.to_string(),
        rootfs_tar: tiny_tar().await,
    }
}

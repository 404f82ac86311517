//! Shared test setup: a busybox image, one driver per (test binary, flavour) with its own
//! state dir, owner, bridge and subnet, torn down (machines, bridge, iptables chains,
//! cgroups, state dir) when the test process exits.

#![allow(dead_code)]

use rnr_driver::Driver;
use rnr_driver_native::{DiskMode, NativeConfig, NativeDriver};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Image name used by every test.
pub const IMAGE: &str = "tiny";

/// Drivers to tear down at exit, with their state dirs.
static CREATED: Mutex<Vec<(Arc<NativeDriver>, PathBuf)>> = Mutex::new(Vec::new());
/// Other directories to remove at exit.
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

/// Builds a busybox rootfs tarball at `out` (from the host's static /bin/busybox).
pub fn build_tiny_tar(work: &Path, out: &Path) {
    let root = work.join("rootfs");
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "var", "usr/bin", "sbin",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("copy /bin/busybox (apt-get install busybox-static)");
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    let st = std::process::Command::new("chmod")
        .args(["1777", &root.join("tmp").to_string_lossy()])
        .status()
        .unwrap();
    assert!(st.success());
    let st = std::process::Command::new("tar")
        .args([
            "-C",
            &root.to_string_lossy(),
            "-cf",
            &out.to_string_lossy(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "tar");
}

/// Flavours of driver a test binary may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Defaults (disk mode auto); execs through the agent (PID 1).
    Plain,
    /// User namespaces; 256 MiB btrfs disks (below the isolation suite's 1 GiB fill).
    Userns,
    /// 96 MiB btrfs disks: more than a test machine's 64 MiB of memory.
    SmallDisk,
    /// 16 MiB tmpfs disks (the fallback disk mode).
    Tmpfs,
    /// A driver of its own for each call, not cached (for set-up and tear-down tests).
    Scratch,
    /// No agent: shell init, every exec through `crun exec`.
    Runtime,
}

static PLAIN: OnceCell<Arc<NativeDriver>> = OnceCell::const_new();
static USERNS: OnceCell<Arc<NativeDriver>> = OnceCell::const_new();
static SMALL: OnceCell<Arc<NativeDriver>> = OnceCell::const_new();
static TMPFS: OnceCell<Arc<NativeDriver>> = OnceCell::const_new();
static RUNTIME: OnceCell<Arc<NativeDriver>> = OnceCell::const_new();
static TAR: OnceCell<PathBuf> = OnceCell::const_new();

async fn tiny_tar() -> PathBuf {
    TAR.get_or_init(|| async {
        let dir = tempfile::Builder::new()
            .prefix("rnr-native-img-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let out = dir.join("tiny.tar");
        build_tiny_tar(&dir, &out);
        register_atexit();
        DIRS.lock().unwrap().push(dir);
        out
    })
    .await
    .clone()
}

fn register_atexit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a plain `extern "C" fn()` that takes no arguments.
        unsafe { libc::atexit(teardown_all) };
    });
}

/// The config of flavour `f` in this process.
pub fn config(f: Flavour, state_dir: &Path) -> NativeConfig {
    let pid = std::process::id();
    let n = match f {
        Flavour::Plain => 0,
        Flavour::Userns => 1,
        Flavour::SmallDisk => 2,
        Flavour::Tmpfs => 3,
        Flavour::Scratch => 4,
        Flavour::Runtime => 5,
    };
    let mut cfg = NativeConfig::new(state_dir, format!("test-{pid}-{n}"));
    cfg.bridge = format!("rnt{}x{n}", pid % 100_000);
    // A /19 per test process: the plain flavour gets a /21, i.e. two bridge segments (its
    // outbound half is the second), the others a /22 each.
    let block = (pid / 100 % 8) * 32;
    cfg.subnet = match n {
        0 => format!("10.{}.{block}.0/21", 100 + (pid % 100)),
        n => format!("10.{}.{}.0/22", 100 + (pid % 100), block + 8 + (n - 1) * 4),
    };
    cfg.userns = f == Flavour::Userns;
    match f {
        Flavour::Userns => {
            cfg.disk = DiskMode::Btrfs;
            cfg.disk_mib = Some(256);
        }
        Flavour::SmallDisk | Flavour::Scratch => {
            cfg.disk = DiskMode::Btrfs;
            cfg.disk_mib = Some(96);
        }
        Flavour::Tmpfs => {
            cfg.disk = DiskMode::Tmpfs;
            cfg.disk_mib = Some(16);
        }
        Flavour::Plain | Flavour::Runtime => {}
    }
    if f != Flavour::Runtime {
        cfg.agent = Some(agent_path());
    }
    cfg
}

/// The static agent: `RNR_AGENT_PATH`, else built with scripts/build-agent.sh.
pub fn agent_path() -> PathBuf {
    rnr_driver::conformance::agent_path()
}

/// The driver of flavour `f` for this process, with the tiny image imported.
pub async fn driver(f: Flavour) -> Arc<NativeDriver> {
    let cell = match f {
        Flavour::Plain => &PLAIN,
        Flavour::Userns => &USERNS,
        Flavour::SmallDisk => &SMALL,
        Flavour::Tmpfs => &TMPFS,
        Flavour::Runtime => &RUNTIME,
        Flavour::Scratch => return new_driver(f).await,
    };
    cell.get_or_init(|| new_driver(f)).await.clone()
}

async fn new_driver(f: Flavour) -> Arc<NativeDriver> {
    let dir = tempfile::Builder::new()
        .prefix("rnr-native-")
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    let driver = Arc::new(
        NativeDriver::new(config(f, &dir))
            .await
            .expect("native driver"),
    );
    register_atexit();
    CREATED.lock().unwrap().push((driver.clone(), dir));
    driver
        .import_image(IMAGE, &tiny_tar().await)
        .await
        .expect("import tiny image");
    driver
}

/// The conformance harness on the plain driver.
pub async fn harness() -> rnr_driver::conformance::Harness {
    rnr_driver::conformance::Harness {
        driver: driver(Flavour::Plain).await,
        image: IMAGE.to_string(),
    }
}

/// The conformance harness on a driver without agent (every exec through crun).
pub async fn runtime_harness() -> rnr_driver::conformance::Harness {
    rnr_driver::conformance::Harness {
        driver: driver(Flavour::Runtime).await,
        image: IMAGE.to_string(),
    }
}

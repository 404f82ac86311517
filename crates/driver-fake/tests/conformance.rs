//! The shared conformance suite on the fake driver (without the limits tests: it enforces
//! none), so that what the layers above are tested against behaves as real drivers do.
//! The tests that run commands as other users are `#[ignore]`d: not run by root, the fake
//! driver's machines have no user but root. scripts/test.sh runs them as root.

use rnr_driver::conformance::Harness;
use rnr_driver::Driver;
use rnr_driver_fake::{FakeConfig, FakeDriver};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::OnceCell;

static TAR: OnceCell<PathBuf> = OnceCell::const_new();
/// The image is imported once per process: its tests share one state dir, and a second
/// import replaces the image directory while another test's create is copying it.
static IMPORTED: OnceCell<()> = OnceCell::const_new();

async fn setup() -> Harness {
    let tar = TAR
        .get_or_init(|| async {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fake-tiny");
            std::fs::create_dir_all(&dir).unwrap();
            let tar = dir.join("tiny.tar");
            let (d, t) = (dir.clone(), tar.clone());
            tokio::task::spawn_blocking(move || {
                rnr_images::build_tiny("/bin/busybox".as_ref(), &d, &t, &rnr_images::NoProgress)
            })
            .await
            .unwrap()
            .expect("the tiny image builds (busybox-static installed?)");
            tar
        })
        .await
        .clone();
    let state = state_dir();
    let driver = FakeDriver::open(FakeConfig::new(
        &state,
        "conformance",
        rnr_driver::conformance::agent_path(),
    ))
    .unwrap();
    IMPORTED
        .get_or_init(|| async {
            driver.images().import("tiny", &tar).await.expect("import");
        })
        .await;
    Harness {
        driver: Arc::new(driver),
        image: "tiny".into(),
        rootfs_tar: tar,
    }
}

/// One state dir per test process (machine ids are unique per process), under cargo's
/// scratch dir; those of earlier runs are removed first.
fn state_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fake-state");
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let alive = e
                    .file_name()
                    .to_str()
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
                if !alive {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        base.join(std::process::id().to_string())
    })
    .clone()
}

rnr_driver::conformance_tests!(setup, no_limits, users_need_root);

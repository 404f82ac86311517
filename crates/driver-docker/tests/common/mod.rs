//! Shared test setup: a Docker driver with its own owner on the `rnr-test` network, and the
//! tiny busybox image built and imported once per test binary.

// Each test binary uses part of it.
#![allow(dead_code)]

use rnr_driver::conformance::Harness;
use rnr_driver::Driver;
use rnr_driver_docker::{DockerConfig, DockerDriver};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::OnceCell;

static IMPORTED: OnceCell<()> = OnceCell::const_new();
static TAR: OnceCell<PathBuf> = OnceCell::const_new();

/// Each test machine's disk: well below the isolation suite's 1 GiB fill, well above the
/// tiny image's 2 MB.
pub const DISK_MIB: u64 = 256;

/// A driver owned by `<suite>-<pid>`, with image `image` imported.
pub async fn harness(suite: &str, image: &str) -> Harness {
    let driver = connect(suite).await;
    import(&driver, image).await;
    Harness {
        driver: Arc::new(driver),
        image: image.into(),
        rootfs_tar: tiny_tar().await,
    }
}

/// Like [`harness`], for suites that need the engine to enforce the machines' disk quota:
/// fails, saying how to get one, when it cannot.
pub async fn harness_with_disk_quota(suite: &str, image: &str) -> Harness {
    let driver = connect(suite).await;
    assert_eq!(
        driver.disk_quota_mib(),
        Some(DISK_MIB),
        "the docker engine's storage driver ({}) cannot limit a machine's disk, so the \
         disk_fill attack would fill the host's disk. Run dockerd on a btrfs data-root with \
         --storage-driver btrfs: stop this dockerd and run scripts/install-deps.sh, which \
         starts one so when no engine runs",
        driver.storage_driver()
    );
    import(&driver, image).await;
    Harness {
        driver: Arc::new(driver),
        image: image.into(),
        rootfs_tar: tiny_tar().await,
    }
}

async fn connect(suite: &str) -> DockerDriver {
    DockerDriver::connect(DockerConfig {
        socket: "/var/run/docker.sock".into(),
        owner: format!("{suite}-{}", std::process::id()),
        network: "rnr-test".into(),
        proc_root: "/proc".into(),
        agent: Some(rnr_driver::conformance::agent_path()),
        agent_stage: std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("docker-agent"),
        disk_mib: Some(DISK_MIB),
        // The suites prove containment on the engine rnr starts, which remaps root.
        require_userns_remap: true,
        max_ptys: rnr_driver_docker::DEFAULT_MAX_PTYS,
    })
    .await
    .expect("docker engine reachable at /var/run/docker.sock")
}

/// The tiny busybox rootfs tarball, built once per test binary into cargo's scratch dir
/// for tests (one file there, replaced by each build, so that nothing accumulates).
async fn tiny_tar() -> PathBuf {
    TAR.get_or_init(|| async {
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = tempfile::tempdir_in(scratch).expect("tempdir");
        let built = dir.path().join("tiny.tar");
        let (d, t) = (dir.path().to_path_buf(), built.clone());
        tokio::task::spawn_blocking(move || {
            rnr_images::build_tiny("/bin/busybox".as_ref(), &d, &t, &rnr_images::NoProgress)
        })
        .await
        .expect("join")
        .expect("tiny image builds");
        // Atomic: test binaries running side by side each replace it with the same content.
        let tar = scratch.join("docker-tiny.tar");
        std::fs::rename(&built, &tar).expect("move the tiny tarball into place");
        tar
    })
    .await
    .clone()
}

async fn import(driver: &DockerDriver, image: &str) {
    IMPORTED
        .get_or_init(|| async {
            let tar = tiny_tar().await;
            driver.images().import(image, &tar).await.expect("import");
        })
        .await;
}

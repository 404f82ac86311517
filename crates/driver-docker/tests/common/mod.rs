//! Shared test setup: a Docker driver with its own owner on the `rnr-test` network, and the
//! tiny busybox image built and imported once per test binary.

use rnr_driver::conformance::Harness;
use rnr_driver::Driver;
use rnr_driver_docker::{DockerConfig, DockerDriver};
use std::sync::Arc;
use tokio::sync::OnceCell;

static IMPORTED: OnceCell<()> = OnceCell::const_new();

/// A driver owned by `<suite>-<pid>`, with image `image` imported.
pub async fn harness(suite: &str, image: &str) -> Harness {
    let driver = DockerDriver::connect(DockerConfig {
        socket: "/var/run/docker.sock".into(),
        owner: format!("{suite}-{}", std::process::id()),
        network: "rnr-test".into(),
        proc_root: "/proc".into(),
        agent: None,
    })
    .await
    .expect("docker engine reachable at /var/run/docker.sock");
    IMPORTED
        .get_or_init(|| async {
            let dir = tempfile::tempdir().expect("tempdir");
            let tar = dir.path().join("tiny.tar");
            let (d, t) = (dir.path().to_path_buf(), tar.clone());
            tokio::task::spawn_blocking(move || {
                rnr_images::build_tiny("/bin/busybox".as_ref(), &d, &t, &rnr_images::NoProgress)
            })
            .await
            .expect("join")
            .expect("tiny image builds");
            driver.import_image(image, &tar).await.expect("import");
        })
        .await;
    Harness {
        driver: Arc::new(driver),
        image: image.into(),
    }
}

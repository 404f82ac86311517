//! The shared driver conformance suite, run against a real Docker Engine.
//!
//! Needs dockerd on /var/run/docker.sock (`.ci/run` starts it) and busybox-static for the
//! tiny test image, which is built and imported once per run.

use rnr_driver::conformance::Harness;
use rnr_driver::Driver;
use rnr_driver_docker::{DockerConfig, DockerDriver};
use std::sync::Arc;
use tokio::sync::OnceCell;

const IMAGE: &str = "conformance-tiny";

static IMPORTED: OnceCell<()> = OnceCell::const_new();

async fn setup() -> Harness {
    let driver = DockerDriver::connect(DockerConfig {
        socket: "/var/run/docker.sock".into(),
        owner: format!("conformance-{}", std::process::id()),
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
            driver.import_image(IMAGE, &tar).await.expect("import");
        })
        .await;
    Harness {
        driver: Arc::new(driver),
        image: IMAGE.into(),
    }
}

rnr_driver::conformance_tests!(setup);
